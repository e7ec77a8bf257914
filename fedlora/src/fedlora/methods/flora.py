"""FLoRA (Wang et al., NeurIPS 2024): stack the clients' adapters, merge, restart from fresh LoRA.

Stacking B_stack = [p_1 B_1 ... p_K B_K], A_stack = [A_1; ...; A_K] gives
s B_stack A_stack = sum_k p_k s B_k A_k exactly, whatever each client's rank. The server merges
that product into the base weights and starts the next round from a fresh LoRA adapter: A drawn
as PEFT initializes it (Kaiming-uniform, a = sqrt(5)) from a generator seeded by (seed, round,
layer), B = 0. Client ranks may differ (federation.client_ranks).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from fedlora.client import derive_seed
from fedlora.methods.base import Method, MethodPreset, RoundContext, register, server_rule
from fedlora.state import LoraFactors

PRESET = MethodPreset(
    name="flora",
    server="fresh",
    merges_base=True,
    takes_client_ranks=True,
    summary="base += s [p_1 B_1 ... p_K B_K][A_1; ...; A_K] (exact, any ranks); next round from fresh LoRA",
    aggregates="products",
    label="FLoRA",
)
register(PRESET)


@server_rule("fresh")
def fresh_layer(clients: list[LoraFactors], weights: Tensor, start: LoraFactors, method: Method,
                ctx: RoundContext) -> LoraFactors:
    """A fresh LoRA layer (new seeded A, B = 0); the round's update goes to the base (merges_base)."""
    generator = torch.Generator().manual_seed(derive_seed((ctx.seed, ctx.round_idx, ctx.layer)))
    A = torch.empty(start.A.shape, dtype=torch.float32)
    torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
    return LoraFactors(A=A.to(start.A.dtype), B=torch.zeros_like(start.B))
