"""FedAvg (FedIT): A and B averaged separately, clients train both."""
from __future__ import annotations

from torch import Tensor

from fedlora.methods.base import Method, MethodPreset, RoundContext, register, server_rule
from fedlora.state import LoraFactors, weighted_sum

PRESET = MethodPreset(
    name="fedavg",
    server="average",
    summary="A_g = sum p_k A_k, B_g = sum p_k B_k; no client penalty",
    aggregates="factors",
    label="FedAvg",
)
register(PRESET)


@server_rule("average")
def average_layer(clients: list[LoraFactors], weights: Tensor, start: LoraFactors, method: Method,
                  ctx: RoundContext) -> LoraFactors:
    """Separate weighted averages (sum_k p_k B_k)(sum_k p_k A_k): not the average of the products.

    A factor the clients did not train this round is the start's, exactly (not an average of copies)."""
    return LoraFactors(
        A=weighted_sum([f.A for f in clients], weights) if "A" in ctx.trained else start.A,
        B=weighted_sum([f.B for f in clients], weights) if "B" in ctx.trained else start.B,
    )
