"""Adapter state exchanged between clients and server: LoRA factors per layer plus head tensors.

For one LoRA layer, A has shape (r, d_in), B has shape (d_out, r) and the weight update is
dW = s * B @ A with s = lora_alpha / r. Everything the server sees is an `AdapterState`.
Methods whose server merges updates into the frozen base weights (FedEx-LoRA, FLoRA) also carry
`base`: per LoRA layer, the dense (d_out, d_in) sum of everything merged so far, so the model a
client trains is W0 + base + s B A.
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
    base: dict[str, Tensor] = field(default_factory=dict)  # merged into the base weights (see above)

    def clone(self) -> "AdapterState":
        return self.map_tensors(lambda t: t.detach().clone())

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> "AdapterState":
        return AdapterState(
            lora={k: LoraFactors(fn(f.A), fn(f.B)) for k, f in self.lora.items()},
            head={k: fn(t) for k, t in self.head.items()},
            base={k: fn(t) for k, t in self.base.items()},
        )

    def truncated(self, rank: int) -> "AdapterState":
        """The adapter a client of LoRA rank `rank` trains: the first `rank` components (rows of A,
        columns of B) kept, the rest zero. Shapes stay the global's (zero-padded), so the
        zero components stay zero in training (their gradients are 0) and the server aggregates
        every client alike."""
        lora = {}
        for name, f in self.lora.items():
            A, B = f.A.detach().clone(), f.B.detach().clone()
            A[rank:] = 0
            B[:, rank:] = 0
            lora[name] = LoraFactors(A, B)
        return AdapterState(lora=lora, head=self.head, base=self.base)

    def nbytes(self) -> int:
        """Bytes on the wire when every tensor is sent once in its own dtype."""
        tensors = [t for f in self.lora.values() for t in f] + list(self.head.values()) + list(self.base.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def flat_dict(self) -> dict[str, Tensor]:
        """One flat name -> tensor mapping (for safetensors and Flower records)."""
        out = {}
        for name, f in self.lora.items():
            out[f"lora::{name}::A"] = f.A
            out[f"lora::{name}::B"] = f.B
        for name, t in self.head.items():
            out[f"head::{name}"] = t
        for name, t in self.base.items():
            out[f"base::{name}"] = t
        return out

    @classmethod
    def from_flat_dict(cls, flat: dict[str, Tensor]) -> "AdapterState":
        lora_parts: dict[str, dict[str, Tensor]] = {}
        head, base = {}, {}
        for key, t in flat.items():
            kind, _, rest = key.partition("::")
            if kind == "lora":
                name, _, part = rest.rpartition("::")
                lora_parts.setdefault(name, {})[part] = t
            elif kind == "head":
                head[rest] = t
            elif kind == "base":
                base[rest] = t
            else:
                raise ValueError(f"unknown adapter tensor key {key!r}")
        lora = {}
        for name, parts in lora_parts.items():
            if set(parts) != {"A", "B"}:
                raise ValueError(f"LoRA layer {name!r} needs both A and B, got {sorted(parts)}")
            lora[name] = LoraFactors(parts["A"], parts["B"])
        unknown = sorted(set(base) - set(lora))
        if unknown:
            raise ValueError(f"merged base tensors for layers without LoRA factors: {unknown[:5]}")
        return cls(lora=lora, head=head, base=base)


def weighted_sum(tensors: list[Tensor], weights: Tensor) -> Tensor:
    """sum_k w_k * t_k for tensors of equal shape (weights already normalised by the caller)."""
    out = torch.zeros_like(tensors[0])
    for w, t in zip(weights.tolist(), tensors):
        out.add_(t, alpha=w)
    return out
