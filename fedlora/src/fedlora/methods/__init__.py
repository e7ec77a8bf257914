"""Aggregation methods: a registry of named presets and `build_method`.

=====================  ==============  ========  ==========================================
name                   server rule     freeze_a  client penalty (mu, a_B, lam)
=====================  ==============  ========  ==========================================
fedavg                 average         no        none
svd                    symmetric       no        none
fedsvd                 fedsvd          yes       none
subspace               orthogonal_b    no        0.05, 0.01, 1e-5
subspace-server-only   orthogonal_b    no        none (ablation: server side only)
fedavg-penalty         average         no        0.05, 0.01, 1e-5 (ablation: client side only)
=====================  ==============  ========  ==========================================

Server rules: `average` averages A and B separately; `symmetric` / `orthogonal_a` /
`orthogonal_b` factorize D = sum_k p_k s B_k A_k with that mode (clip, top-r SVD, norm restore);
`fedsvd` factorizes s (sum_k p_k B_k) A_prev with `orthogonal_a`. Config switches
(`method.server`, `mu`, `a_b`, `lam`, `freeze_a`, `norm_restore`, `clip`, `clip_tau`) override
any preset, so every combination of server rule x penalty terms x norm restore x clipping runs.
"""
from __future__ import annotations

import math

from fedlora.config import MethodConfig
from fedlora.methods import fedavg, fedsvd, subspace, svd
from fedlora.methods.base import Method, MethodPreset, PenaltyWeights

METHODS: dict[str, MethodPreset] = {
    p.name: p
    for p in (fedavg.PRESET, svd.PRESET, fedsvd.PRESET, subspace.PRESET, subspace.SERVER_ONLY,
              subspace.PENALTY_ONLY)
}


def _pick(override, default):
    return default if override is None else override


def build_method(cfg: MethodConfig, *, rank: int, scaling: float, family_clip_tau: float) -> Method:
    """The preset named by `cfg.name` with the config's ablation switches applied."""
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; valid names: {', '.join(METHODS)}")
    preset = METHODS[cfg.name]
    penalty = PenaltyWeights(
        mu=_pick(cfg.mu, preset.penalty.mu),
        a_b=_pick(cfg.a_b, preset.penalty.a_b),
        lam=_pick(cfg.lam, preset.penalty.lam),
    )
    clip_tau = _pick(cfg.clip_tau, family_clip_tau) if cfg.clip else math.inf
    return Method(
        name=preset.name,
        server=_pick(cfg.server, preset.server),
        rank=rank,
        scaling=scaling,
        freeze_a=_pick(cfg.freeze_a, preset.freeze_a),
        penalty=penalty,
        clip_tau=clip_tau,
        norm_restore=cfg.norm_restore,
    )


__all__ = ["METHODS", "Method", "MethodPreset", "PenaltyWeights", "build_method"]
