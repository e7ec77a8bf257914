"""What every aggregation method is: a server rule, client-side switches and the aggregation step.

A `MethodPreset` names a method; each module of this package registers its presets (`register`)
and the server rules it defines (`server_rule`), so adding a method is one new module.
`build_method` in the package turns a preset plus the run's config switches into a `Method`, which
the engine calls once per round: `method.aggregate(updates, weights, start, round_idx)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

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


# Which LoRA factors clients train: both, B only (A frozen), A only (B frozen).
FACTORS = ("AB", "B", "A")


def check_trains(name: str, trains: tuple[str, ...]) -> None:
    if not trains or any(t not in FACTORS for t in trains):
        raise ValueError(f"method {name!r}: trains must be a non-empty sequence of {FACTORS}, got {trains!r}")


@dataclass(frozen=True)
class MethodPreset:
    """A named method before the run's switches are applied.

    `trains` is the schedule of trained factors, cycled over rounds: ("AB",) trains both every round,
    ("B",) freezes A for good, ("B", "A") alternates (round 1 B, round 2 A, ...)."""

    name: str
    server: str
    trains: tuple[str, ...] = ("AB",)
    penalty: PenaltyWeights = field(default_factory=PenaltyWeights)
    summary: str = ""
    label: str = ""  # how tables name it (default: the name)
    # The server folds sum_k p_k s B_k A_k - s B_g A_g into the frozen base weights, so the global
    # model is exactly the average of the clients' models (AdapterState.base).
    merges_base: bool = False
    # Clients may train different LoRA ranks (federation.client_ranks): the method's paper defines it.
    takes_client_ranks: bool = False
    # Factors each client keeps for itself ("B" for FedSA-LoRA): trained, never sent, never averaged.
    personal: str = ""
    # Clients may shrink their own rank as they train (method.prune_gamma: HetLoRA's self-pruning).
    prunes_ranks: bool = False
    # What the server rule reads of the clients' updates, for differential privacy (privacy.py):
    # "factors" (a mean of the sent tensors), "products" (sum_k p_k s B_k A_k) or "other".
    aggregates: str = "other"

    def __post_init__(self) -> None:
        check_trains(self.name, self.trains)
        if self.aggregates not in ("factors", "products", "other"):
            raise ValueError(f"method {self.name!r}: aggregates must be factors, products or other")


@dataclass(frozen=True)
class RoundContext:
    """What a layer rule may need besides the factors: the factors the clients sent this round ("AB",
    "A" or "B"; the others are the round's start), the round (1-based), the run's seed and the
    layer's index (for seeded draws)."""

    trained: str = "AB"
    round_idx: int = 1
    seed: int = 0
    layer: int = 0


# One LoRA layer: (client factors, weights (K,), start factors, method, context) -> new global factors.
LayerRule = Callable[[list[LoraFactors], Tensor, LoraFactors, "Method", RoundContext], LoraFactors]

# The registry: every module of this package registers its presets and server rules on import.
PRESETS: dict[str, MethodPreset] = {}
SERVER_RULES: dict[str, LayerRule] = {}


def register(*presets: MethodPreset) -> None:
    for preset in presets:
        if preset.name in PRESETS:
            raise ValueError(f"method {preset.name!r} is registered twice")
        PRESETS[preset.name] = preset


def server_rule(*names: str) -> Callable[[LayerRule], LayerRule]:
    """Decorator registering a layer rule under one or more server-rule names."""
    def add(rule: LayerRule) -> LayerRule:
        for name in names:
            if name in SERVER_RULES:
                raise ValueError(f"server rule {name!r} is registered twice")
            SERVER_RULES[name] = rule
        return rule
    return add


def variant_text(name: str, switches: dict[str, object]) -> str:
    return name + "".join(f":{k}={v}" for k, v in switches.items())


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
    `overrides` names the config switches that differ from the preset (they make the label).
    """

    name: str
    server: str
    rank: int
    scaling: float
    trains: tuple[str, ...] = ("AB",)
    penalty: PenaltyWeights = field(default_factory=PenaltyWeights)
    clip_tau: float = math.inf
    norm_restore: bool = True
    merges_base: bool = False
    takes_client_ranks: bool = False
    personal: str = ""
    aggregates: str = "other"
    prune_gamma: float | None = None  # rank self-pruning (None: off) and its regulariser's weight
    prune_lambda: float = 0.0
    overrides: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.server not in SERVER_RULES:
            raise ValueError(f"unknown server rule {self.server!r}; valid rules: {', '.join(SERVER_RULES)}")
        check_trains(self.name, self.trains)
        if self.rank <= 0 or not self.scaling > 0 or not self.clip_tau > 0:
            raise ValueError(
                f"method {self.name!r}: rank, scaling and clip_tau must be > 0, got "
                f"{self.rank}, {self.scaling}, {self.clip_tau}"
            )

    def trained(self, round_idx: int) -> str:
        """The factors clients train in round `round_idx` (1-based): "AB", "B" or "A"."""
        return self.trains[(round_idx - 1) % len(self.trains)]

    def sent(self, round_idx: int) -> str:
        """The factors clients send (and the server aggregates) in round `round_idx`: those they
        trained, less their personal ones."""
        return "".join(f for f in self.trained(round_idx) if f not in self.personal)

    @property
    def label(self) -> str:
        """The name, plus the config switches set: `subspace:mu=0.5:a_b=0.1`."""
        return variant_text(self.name, self.overrides)

    def spec(self) -> dict[str, object]:
        """Everything that decides what this method does, resolved (for results and summaries)."""
        return {"name": self.name, "label": self.label, "server": self.server, "trains": "/".join(self.trains),
                "mu": self.penalty.mu, "a_b": self.penalty.a_b, "lam": self.penalty.lam,
                "norm_restore": self.norm_restore,
                "clip_tau": self.clip_tau if math.isfinite(self.clip_tau) else None,  # None: no clipping
                "prune_gamma": self.prune_gamma, "prune_lambda": self.prune_lambda}

    def aggregate(self, updates: list[AdapterState], weights: Tensor, start: AdapterState,
                  round_idx: int = 1, seed: int = 0, check_layout: bool = True) -> AdapterState:
        """New global adapter from the clients' adapters of round `round_idx`, weights p_k (sum 1)
        and the round's start (`seed`: the run's, for rules that draw). `check_layout=False` lets
        privacy.py pass a dense pseudo-client (B = D / s, A = I)."""
        weights = check_weights(weights, len(updates))
        if check_layout:
            check_same_layout(updates, start)
        rule, sent = SERVER_RULES[self.server], self.sent(round_idx)
        lora = {
            name: rule([u.lora[name] for u in updates], weights, start.lora[name], self,
                       RoundContext(sent, round_idx, seed, i))
            for i, name in enumerate(start.lora)
        }
        head = {
            name: weighted_sum([u.head[name] for u in updates], weights)
            for name in start.head
        }
        base = start.base
        if self.merges_base:
            base = {name: merged_base([u.lora[name] for u in updates], weights, start.base.get(name),
                                      lora[name], self.scaling)
                    for name in start.lora}
        return AdapterState(lora=lora, head=head, base=base)


def merged_base(clients: list[LoraFactors], weights: Tensor, base: Tensor | None, new: LoraFactors,
                scaling: float) -> Tensor:
    """base + sum_k p_k s B_k A_k - s B_g A_g: what the new global factors leave out of the clients'
    average update, folded into the base weights (summed in float64, returned in the factors' dtype)."""
    f64 = torch.float64
    B_cat = torch.cat([f.B.to(f64) * p for f, p in zip(clients, weights.tolist())] + [-new.B.to(f64)], dim=1)
    A_cat = torch.cat([f.A.to(f64) for f in clients] + [new.A.to(f64)], dim=0)
    increment = scaling * (B_cat @ A_cat)
    return (increment if base is None else base.to(f64) + increment).to(new.A.dtype)
