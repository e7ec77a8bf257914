"""HetLoRA (Cho et al., EMNLP 2024): zero-padding, sparsity-weighted aggregation, truncation.

Clients of rank r_k send factors zero-padded to the global rank. Per LoRA layer the server weighs
client k by the Frobenius norm of its update, w_k = ||s B_k A_k||_F / sum_j ||s B_j A_j||_F (the
paper's sparsity weighting: clients whose update carries more energy count more), and averages A
and B separately with those weights; each client then trains the truncation of the global to its
own rank (its first r_k components). The paper's local rank self-pruning is not implemented.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fedlora.methods.base import Method, MethodPreset, RoundContext, register, server_rule
from fedlora.state import LoraFactors, weighted_sum

PRESET = MethodPreset(
    name="hetlora",
    server="sparsity_weighted",
    takes_client_ranks=True,
    summary="A_g, B_g = sums weighted by ||s B_k A_k||_F (zero-padded); client k trains the first r_k components",
    label="HetLoRA",
)
register(PRESET)


@server_rule("sparsity_weighted")
def sparsity_weighted_layer(clients: list[LoraFactors], weights: Tensor, start: LoraFactors, method: Method,
                            ctx: RoundContext) -> LoraFactors:
    """Separate averages of A and B weighted by each client's update norm (the data weights p_k
    are not used: the paper weighs by norm alone). All-zero updates fall back to equal weights."""
    from fedlora.geometry import factored_gram  # geometry imports this package's base module

    f64 = torch.float64
    norms = factored_gram([f.B.to(f64) for f in clients], [f.A.to(f64) for f in clients]).diagonal().clamp_min(0).sqrt()
    w = norms / norms.sum() if norms.sum() > 0 else torch.full_like(norms, 1 / len(clients))
    return LoraFactors(A=weighted_sum([f.A for f in clients], w), B=weighted_sum([f.B for f in clients], w))
