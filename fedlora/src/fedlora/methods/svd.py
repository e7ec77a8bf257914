"""SVD redistribution (FlexLoRA-style): re-factorize the averaged full update."""
from __future__ import annotations

import torch
from torch import Tensor

from fedlora.factorize import factorize_product
from fedlora.methods.base import Method, MethodPreset, RoundContext, register, server_rule
from fedlora.state import LoraFactors

PRESET = MethodPreset(
    name="svd",
    server="symmetric",
    summary="D = sum p_k s B_k A_k, factorize(D, symmetric); no client penalty",
    aggregates="products",
    label="SVD",
)
register(PRESET)


@server_rule("symmetric", "orthogonal_a", "orthogonal_b")
def redistribute_layer(clients: list[LoraFactors], weights: Tensor, start: LoraFactors,
                       method: Method, ctx: RoundContext) -> LoraFactors:
    """factorize(sum_k p_k s B_k A_k, mode=method.server) from the stacked factors.

    sum_k p_k B_k A_k = [p_1 B_1 ... p_K B_K] [A_1; ...; A_K], so the SVD runs on rank <= K r
    factors and the d_out x d_in update is never formed.
    """
    B_cat = torch.cat([f.B.to(torch.float64) * p for f, p in zip(clients, weights.tolist())], dim=1)
    A_cat = torch.cat([f.A.to(torch.float64) for f in clients], dim=0)
    out = factorize_product(B_cat, A_cat, method.server, method.rank, method.scaling,
                            method.clip_tau, method.norm_restore)
    return LoraFactors(A=out.A.to(start.A.dtype), B=out.B.to(start.B.dtype))
