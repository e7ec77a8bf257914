"""Aggregation methods: a registry filled by the modules of this package, and `build_method`.

Every module here registers its presets (`register`) and any server rule it defines
(`server_rule`); this package imports them all, so adding a method is one new module plus its
tests. `fedlora methods` prints the table below from the registry.

=====================  ==============  ==========  ==========================================
name                   server rule     trains      client penalty (mu, a_B, lam)
=====================  ==============  ==========  ==========================================
fedavg                 average         A, B        none
svd                    symmetric       A, B        none
fedsvd                 fedsvd          B           none
subspace               orthogonal_b    A, B        0.05, 0.01, 1e-5
subspace-server-only   orthogonal_b    A, B        none (ablation: server side only)
fedavg-penalty         average         A, B        0.05, 0.01, 1e-5 (ablation: client side only)
ffa-lora               average         B           none
rolora                 average         B then A    none
fedex-lora             average + merge A, B        none
flora                  fresh + merge   A, B        none (client ranks may differ)
flexlora               symmetric       A, B        none (client ranks may differ)
hetlora                sparsity_w.     A, B        none (client ranks may differ; optional self-pruning)
fedsa-lora             average (A)     A, B        none (B stays on each client)
=====================  ==============  ==========  ==========================================

Server rules: `average` averages the trained factors separately (a frozen factor stays the
round's start); `fresh` restarts from a new seeded LoRA (FLoRA); `sparsity_weighted` averages with
weights ||s B_k A_k||_F (HetLoRA); "+ merge" folds sum_k p_k s B_k A_k - s B_g A_g into the base
weights (`MethodPreset.merges_base`); `symmetric` / `orthogonal_a` / `orthogonal_b` factorize D = sum_k p_k s B_k A_k
with that mode (clip, top-r SVD, norm restore); `fedsvd` factorizes s (sum_k p_k B_k) A_prev with
`orthogonal_a`. Config switches (`method.server`, `mu`, `a_b`, `lam`, `freeze_a`, `norm_restore`,
`clip`, `clip_tau`) override any preset, so every combination of server rule x penalty terms x
norm restore x clipping runs; `prune_gamma` (and `prune_lambda`) turn on HetLoRA's rank
self-pruning. A run's label names the switches that differ from its preset.
"""
from __future__ import annotations

import importlib
import math
import pkgutil

from fedlora.config import MethodConfig
from fedlora.methods.base import PRESETS, SERVER_RULES, Method, MethodPreset, PenaltyWeights, variant_text
from fedlora.methods.hetlora import DEFAULT_PRUNE_LAMBDA

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

# The reference study's four first (tables list methods in this order), then the rest by name.
_FIRST = ("fedavg", "svd", "fedsvd", "subspace", "subspace-server-only", "fedavg-penalty")
METHODS: dict[str, MethodPreset] = {name: PRESETS[name] for name in
                                    sorted(PRESETS, key=lambda n: (_FIRST.index(n) if n in _FIRST else len(_FIRST), n))}


def method_label(label: str) -> str:
    """How tables name a method or a variant (`subspace:mu=0.5` -> `Subspace-Reg (mu=0.5)`)."""
    name, sep, rest = label.partition(":")
    preset = METHODS.get(name)
    return (preset.label or name if preset else name) + (f" ({rest.replace(':', ', ')})" if sep else "")


def method_order(label: str) -> tuple[int, str]:
    """Sort key of method labels: registry order of their names, then the label."""
    names = list(METHODS)
    name = label.partition(":")[0]
    return (names.index(name) if name in names else len(names), label)


def switches_set(cfg: MethodConfig) -> dict[str, object]:
    """The config's method switches that differ from their defaults, in field order."""
    defaults = MethodConfig(name=cfg.name).model_dump()
    return {k: v for k, v in cfg.model_dump().items() if k != "name" and v != defaults[k]}


def variant_label(cfg: MethodConfig) -> str:
    """The run's method label: the name, then each switch set (`subspace:mu=0.5:a_b=0.1`). The
    same text given to `fedlora sweep --methods` runs the same variant."""
    return variant_text(cfg.name, switches_set(cfg))


def build_method(cfg: MethodConfig, *, rank: int, scaling: float, family_clip_tau: float) -> Method:
    """The preset named by `cfg.name` with the config's ablation switches applied."""
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; valid names: {', '.join(METHODS)}")
    preset = METHODS[cfg.name]
    penalty = PenaltyWeights(
        mu=preset.penalty.mu if cfg.mu is None else cfg.mu,
        a_b=preset.penalty.a_b if cfg.a_b is None else cfg.a_b,
        lam=preset.penalty.lam if cfg.lam is None else cfg.lam,
    )
    trains = preset.trains if cfg.freeze_a is None else (("B",) if cfg.freeze_a else ("AB",))
    return Method(
        name=preset.name,
        server=preset.server if cfg.server is None else cfg.server,
        rank=rank,
        scaling=scaling,
        trains=trains,
        penalty=penalty,
        clip_tau=(family_clip_tau if cfg.clip_tau is None else cfg.clip_tau) if cfg.clip else math.inf,
        norm_restore=cfg.norm_restore,
        merges_base=preset.merges_base,
        takes_client_ranks=preset.takes_client_ranks,
        personal=preset.personal,
        aggregates=preset.aggregates,
        prune_gamma=cfg.prune_gamma,
        prune_lambda=DEFAULT_PRUNE_LAMBDA if cfg.prune_lambda is None else cfg.prune_lambda,
        overrides=switches_set(cfg),
    )


__all__ = ["METHODS", "SERVER_RULES", "Method", "MethodPreset", "PenaltyWeights", "build_method", "method_label",
           "method_order", "switches_set", "variant_label"]
