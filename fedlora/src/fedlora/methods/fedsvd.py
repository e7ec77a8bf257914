"""FedSVD: clients freeze A; the server averages B and re-factorizes s B_bar A_prev exactly."""
from __future__ import annotations

from torch import Tensor

from fedlora.factorize import factorize_product
from fedlora.methods.base import Method, MethodPreset, RoundContext, register, server_rule
from fedlora.state import LoraFactors, weighted_sum

PRESET = MethodPreset(
    name="fedsvd",
    server="fedsvd",
    trains=("B",),
    summary="clients train B only; B_bar = sum p_k B_k, factorize(s B_bar A_prev, orthogonal_a)",
    aggregates="factors",
    label="FedSVD",
)
register(PRESET)


@server_rule("fedsvd")
def fedsvd_layer(clients: list[LoraFactors], weights: Tensor, start: LoraFactors, method: Method,
                 ctx: RoundContext) -> LoraFactors:
    """(B_g, A_g) with s B_g A_g = s B_bar A_prev and orthonormal rows of A_g.

    rank(B_bar A_prev) <= r, so the factorization is exact and norm restore has rho = 1; only
    clipping (when on and ||D||_F > tau) changes the product.
    """
    B_bar = weighted_sum([f.B for f in clients], weights)
    out = factorize_product(B_bar, start.A, "orthogonal_a", method.rank, method.scaling,
                            method.clip_tau, method.norm_restore)
    return LoraFactors(A=out.A.to(start.A.dtype), B=out.B.to(start.B.dtype))
