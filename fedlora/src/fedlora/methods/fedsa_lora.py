"""FedSA-LoRA (Guo et al., ICLR 2025): share A, keep B personal.

Clients train A and B; they send A only and the server averages it. Each client's B stays on the
client (it starts from the initial global B, zero, and continues from its own B every round it
is sampled): A learns what clients share, B what is theirs. The method is scored by the clients'
own models (A_g, B_k) on held-out items of their own partitions (federation.client_holdout). Its
"global" accuracy is an evaluation-only model, A_g with the partition-weighted mean of the
clients' B, which no party holds in a real federation.
"""
from __future__ import annotations

from fedlora.methods.base import MethodPreset, register

PRESET = MethodPreset(
    name="fedsa-lora",
    server="average",
    personal="B",
    summary="A_g = sum p_k A_k; each client keeps its own B (never sent)",
    aggregates="factors",
    label="FedSA-LoRA",
)
register(PRESET)
