"""What every aggregation method is: a server rule, client-side switches and the aggregation step.

A `MethodPreset` names a method (one module per method holds its preset); `build_method` in the
package turns a preset plus the run's config switches into a `Method`, which the engine calls
once per round: `method.aggregate(updates, weights, start)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from fedlora.config import ServerRule
from fedlora.state import AdapterState, LoraFactors, weighted_sum


@dataclass(frozen=True)
class PenaltyWeights:
    """Client penalty weights: mu (full-update proximity), a_b (B proximity), lam (L2 on A, B)."""

    mu: float = 0.0
    a_b: float = 0.0
    lam: float = 0.0

    def __post_init__(self) -> None:
        for name in ("mu", "a_b", "lam"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"penalty weight {name} must be finite and >= 0, got {value!r}")

    @property
    def active(self) -> bool:
        return self.mu > 0 or self.a_b > 0 or self.lam > 0


@dataclass(frozen=True)
class MethodPreset:
    """A named method before the run's switches are applied."""

    name: str
    server: ServerRule
    freeze_a: bool = False
    penalty: PenaltyWeights = field(default_factory=PenaltyWeights)
    summary: str = ""


# One LoRA layer: (client factors, weights (K,), start factors, method) -> new global factors.
LayerRule = Callable[[list[LoraFactors], Tensor, LoraFactors, "Method"], LoraFactors]


def _layer_rule(server: str) -> LayerRule:
    # Imported here: the method modules import this module for their presets.
    from fedlora.methods.fedavg import average_layer
    from fedlora.methods.fedsvd import fedsvd_layer
    from fedlora.methods.svd import redistribute_layer

    if server == "average":
        return average_layer
    if server == "fedsvd":
        return fedsvd_layer
    if server in ("symmetric", "orthogonal_a", "orthogonal_b"):
        return redistribute_layer
    raise ValueError(f"unknown server rule {server!r}")


def check_weights(weights: Tensor, n_updates: int) -> Tensor:
    if n_updates == 0:
        raise ValueError("aggregate needs at least one client update")
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.shape != (n_updates,):
        raise ValueError(f"weights must have shape ({n_updates},) (one per update), got {tuple(weights.shape)}")
    if (weights < 0).any() or abs(weights.sum().item() - 1.0) > 1e-6:
        raise ValueError(f"weights must be >= 0 and sum to 1, got {weights.tolist()}")
    return weights / weights.sum()  # float32 weights sum to 1 only within ~1e-7


def check_same_layout(updates: list[AdapterState], start: AdapterState) -> None:
    """Every update must carry exactly the start adapter's layers and head tensors, same shapes."""
    for k, u in enumerate(updates):
        if u.lora.keys() != start.lora.keys():
            diff = sorted(set(u.lora) ^ set(start.lora))
            raise ValueError(f"update {k}: LoRA layers differ from the global adapter: {diff[:5]}")
        if u.head.keys() != start.head.keys():
            diff = sorted(set(u.head) ^ set(start.head))
            raise ValueError(f"update {k}: head tensors differ from the global adapter: {diff[:5]}")
        for name, f in u.lora.items():
            ref = start.lora[name]
            if f.A.shape != ref.A.shape or f.B.shape != ref.B.shape:
                raise ValueError(
                    f"update {k}, layer {name!r}: A {tuple(f.A.shape)} / B {tuple(f.B.shape)}, expected "
                    f"A {tuple(ref.A.shape)} / B {tuple(ref.B.shape)}"
                )
        for name, t in u.head.items():
            if t.shape != start.head[name].shape:
                raise ValueError(
                    f"update {k}, head {name!r}: shape {tuple(t.shape)}, expected {tuple(start.head[name].shape)}"
                )


@dataclass
class Method:
    """An aggregation method with its client-side switches.

    `server` picks the LoRA rule; head tensors are always plain weighted averages.
    `clip_tau` = inf turns clipping off; `norm_restore` toggles step 4 of `factorize`.
    """

    name: str
    server: ServerRule
    rank: int
    scaling: float
    freeze_a: bool = False
    penalty: PenaltyWeights = field(default_factory=PenaltyWeights)
    clip_tau: float = math.inf
    norm_restore: bool = True

    def __post_init__(self) -> None:
        _layer_rule(self.server)  # fail at build time on an unknown rule
        if self.rank <= 0 or not self.scaling > 0 or not self.clip_tau > 0:
            raise ValueError(
                f"method {self.name!r}: rank, scaling and clip_tau must be > 0, got "
                f"{self.rank}, {self.scaling}, {self.clip_tau}"
            )

    def aggregate(self, updates: list[AdapterState], weights: Tensor, start: AdapterState) -> AdapterState:
        """New global adapter from the clients' adapters, weights p_k (sum 1) and the round's start."""
        weights = check_weights(weights, len(updates))
        check_same_layout(updates, start)
        rule = _layer_rule(self.server)
        lora = {
            name: rule([u.lora[name] for u in updates], weights, start.lora[name], self)
            for name in start.lora
        }
        head = {
            name: weighted_sum([u.head[name] for u in updates], weights)
            for name in start.head
        }
        return AdapterState(lora=lora, head=head)
