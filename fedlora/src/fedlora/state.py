"""Adapter state exchanged between clients and server: LoRA factors per layer plus head tensors.

For one LoRA layer, A has shape (r, d_in), B has shape (d_out, r) and the weight update is
dW = s * B @ A with s = lora_alpha / r. Everything the server sees is an `AdapterState`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import Tensor


class LoraFactors(NamedTuple):
    A: Tensor  # (r, d_in)
    B: Tensor  # (d_out, r)


@dataclass
class AdapterState:
    """Global or client adapter: `lora` keyed by LoRA module name, `head` by parameter name."""

    lora: dict[str, LoraFactors]
    head: dict[str, Tensor] = field(default_factory=dict)

    def clone(self) -> "AdapterState":
        return AdapterState(
            lora={k: LoraFactors(f.A.detach().clone(), f.B.detach().clone()) for k, f in self.lora.items()},
            head={k: t.detach().clone() for k, t in self.head.items()},
        )

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> "AdapterState":
        return AdapterState(
            lora={k: LoraFactors(fn(f.A), fn(f.B)) for k, f in self.lora.items()},
            head={k: fn(t) for k, t in self.head.items()},
        )

    def nbytes(self) -> int:
        """Bytes on the wire when every tensor is sent once in its own dtype."""
        tensors = [t for f in self.lora.values() for t in f] + list(self.head.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def flat_dict(self) -> dict[str, Tensor]:
        """One flat name -> tensor mapping (for safetensors and Flower records)."""
        out = {}
        for name, f in self.lora.items():
            out[f"lora::{name}::A"] = f.A
            out[f"lora::{name}::B"] = f.B
        for name, t in self.head.items():
            out[f"head::{name}"] = t
        return out

    @classmethod
    def from_flat_dict(cls, flat: dict[str, Tensor]) -> "AdapterState":
        lora_parts: dict[str, dict[str, Tensor]] = {}
        head = {}
        for key, t in flat.items():
            kind, _, rest = key.partition("::")
            if kind == "lora":
                name, _, part = rest.rpartition("::")
                lora_parts.setdefault(name, {})[part] = t
            elif kind == "head":
                head[rest] = t
            else:
                raise ValueError(f"unknown adapter tensor key {key!r}")
        lora = {}
        for name, parts in lora_parts.items():
            if set(parts) != {"A", "B"}:
                raise ValueError(f"LoRA layer {name!r} needs both A and B, got {sorted(parts)}")
            lora[name] = LoraFactors(parts["A"], parts["B"])
        return cls(lora=lora, head=head)


def weighted_sum(tensors: list[Tensor], weights: Tensor) -> Tensor:
    """sum_k w_k * t_k for tensors of equal shape (weights already normalised by the caller)."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights.tolist(), tensors):
        out.add_(t, alpha=w)
    return out
