"""FFA-LoRA (Sun et al., ICLR 2024): A stays frozen at its shared random initialization for the
whole run; clients train B and the server averages B.

With A the same on every client, sum_k p_k s B_k A = s (sum_k p_k B_k) A: the plain average of B
is the exact average of the clients' updates. Clients send B only.
"""
from __future__ import annotations

from fedlora.methods.base import MethodPreset, register

PRESET = MethodPreset(
    name="ffa-lora",
    server="average",
    trains=("B",),
    summary="A frozen at its initialization; B_g = sum p_k B_k (exact)",
    aggregates="factors",
    label="FFA-LoRA",
)
register(PRESET)
