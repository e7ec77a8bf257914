"""HetLoRA (Cho et al., EMNLP 2024): zero-padding, sparsity-weighted aggregation, truncation.

Clients of rank r_k send factors zero-padded to the global rank. Per LoRA layer the server weighs
client k by the Frobenius norm of its update, w_k = ||s B_k A_k||_F / sum_j ||s B_j A_j||_F (the
paper's sparsity weighting: clients whose update carries more energy count more), and averages A
and B separately with those weights; each client then trains the truncation of the global to its
own rank (its first r_k components).

Local rank self-pruning (the paper's option; `method.prune_gamma`, off by default): a client of
rank r adds lambda * sum_l ||A_l[t:r, :]||_F * ||B_l[:, t:r]||_F to its loss, t = floor(gamma r),
which pushes its last r - t components toward zero; if training left that tail smaller than it
started, the client keeps rank t from then on (and sends t components), else it stays at r.
Clients never grow back. The server learns each client's rank from its reply.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fedlora.methods.base import Method, MethodPreset, RoundContext, register, server_rule
from fedlora.state import LoraFactors, weighted_sum

PRESET = MethodPreset(
    name="hetlora",
    server="sparsity_weighted",
    takes_client_ranks=True,
    prunes_ranks=True,
    summary="A_g, B_g = sums weighted by ||s B_k A_k||_F (zero-padded); client k trains the first r_k components",
    label="HetLoRA",
)
register(PRESET)

# The regulariser's weight when method.prune_lambda is not set. The paper leaves it a
# hyperparameter and states no value; this one is ours.
DEFAULT_PRUNE_LAMBDA = 1e-2


def kept_rank(rank: int, gamma: float) -> int:
    """The rank a client of rank `rank` prunes to: floor(gamma * rank), at least 1. (The 1e-9
    keeps floor(0.7 * 10) at 7 where 0.7 * 10 rounds to 6.9999....)"""
    return max(1, math.floor(gamma * rank + 1e-9))


def tail_norm_product(factors: dict[str, LoraFactors], rank: int, gamma: float) -> Tensor:
    """sum over layers of ||A[t:rank, :]||_F * ||B[:, t:rank]||_F, t = kept_rank(rank, gamma)."""
    t = kept_rank(rank, gamma)
    total = next(iter(factors.values())).A.new_zeros(())
    for f in factors.values():
        total = total + torch.linalg.vector_norm(f.A[t:rank]) * torch.linalg.vector_norm(f.B[:, t:rank])
    return total


class RankSelfPruning:
    """The client-side half of self-pruning for one local update of a client of rank `rank`:
    called on the live factors it is the regulariser; `pruned_rank` decides the rank afterwards."""

    def __init__(self, start: dict[str, LoraFactors], rank: int, gamma: float, lam: float):
        self.rank, self.gamma, self.lam = rank, gamma, lam
        with torch.no_grad():
            self.tail_before = tail_norm_product(start, rank, gamma).item()

    def __call__(self, live: dict[str, LoraFactors]) -> Tensor:
        return self.lam * tail_norm_product(live, self.rank, self.gamma)

    def pruned_rank(self, trained: dict[str, LoraFactors]) -> int:
        """kept_rank if training shrank the tail (strictly), else the rank unchanged."""
        with torch.no_grad():
            after = tail_norm_product(trained, self.rank, self.gamma).item()
        return kept_rank(self.rank, self.gamma) if after < self.tail_before else self.rank


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
