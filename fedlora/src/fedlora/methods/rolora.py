"""RoLoRA (Chen et al., NeurIPS 2025): alternating optimization of the LoRA factors.

Odd rounds clients train B with A frozen and the server averages B; even rounds they train A with B
frozen and the server averages A. The frozen factor is shared, so each average is the exact
average of the clients' updates, and both factors learn (unlike FFA-LoRA). B comes first: it
starts at zero, which makes A's gradient zero until B has moved. Clients send the trained factor only.
"""
from __future__ import annotations

from fedlora.methods.base import MethodPreset, register

PRESET = MethodPreset(
    name="rolora",
    server="average",
    trains=("B", "A"),
    summary="round 1, 3, ...: train and average B; round 2, 4, ...: train and average A (exact)",
    aggregates="factors",
    label="RoLoRA",
)
register(PRESET)
