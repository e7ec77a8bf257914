"""FedEx-LoRA (Singhal et al., ACL 2025): exact aggregation by folding the residual into the base.

The server averages A and B as FedAvg does, and folds what that leaves out of the clients' average
update, sum_k p_k s B_k A_k - s B_avg A_avg, into the frozen base weights. The global model
W0 + base + s B_avg A_avg is then exactly the average of the clients' models. Clients train A and B
from the averaged factors on the updated base.
"""
from __future__ import annotations

from fedlora.methods.base import MethodPreset, register

PRESET = MethodPreset(
    name="fedex-lora",
    server="average",
    merges_base=True,
    summary="A_g, B_g averaged; base += sum p_k s B_k A_k - s B_g A_g (exact)",
    label="FedEx-LoRA",
)
register(PRESET)
