"""Subspace-Reg: orthogonal-B server factorization plus a client penalty toward the global adapter.

The two ablations separate the server side from the client side of the method.
"""
from __future__ import annotations

from fedlora.methods.base import MethodPreset, PenaltyWeights, register

SUBSPACE_PENALTY = PenaltyWeights(mu=0.05, a_b=0.01, lam=1e-5)

PRESET = MethodPreset(
    name="subspace",
    server="orthogonal_b",
    penalty=SUBSPACE_PENALTY,
    summary="factorize(sum p_k s B_k A_k, orthogonal_b) + client penalty mu=0.05, a_B=0.01, lam=1e-5",
    aggregates="products",
    label="Subspace-Reg",
)

# Ablations: server rule without the penalty, and the penalty with a plain-average server.
SERVER_ONLY = MethodPreset(
    name="subspace-server-only",
    server="orthogonal_b",
    aggregates="products",
    summary="Subspace-Reg server rule, no client penalty",
)
PENALTY_ONLY = MethodPreset(
    name="fedavg-penalty",
    server="average",
    aggregates="factors",
    penalty=SUBSPACE_PENALTY,
    summary="FedAvg server rule + the Subspace-Reg client penalty",
)
register(PRESET, SERVER_ONLY, PENALTY_ONLY)
