"""The typed rows of a run folder: one round's record (a line of metrics.jsonl) and the run's
summary (summary.json). The engine and the Flower apps write them; summaries, plots, sweeps and
the reproduction report read them; the files are their `to_json()` (fields that are None left out).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _from_json(cls, data: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}")
    return cls(**data)


def _to_json(obj) -> dict[str, Any]:
    return {k: v for k, v in asdict(obj).items() if v is not None and not k.startswith("_")}


@dataclass
class RoundRecord:
    """One round. Round 0 is the zero-shot evaluation of the initial adapter (accuracy, loss, n);
    rounds >= 1 carry the clients' training, the aggregation's geometry and, when evaluated, the
    global model's scores (None on rounds that are not evaluated)."""

    round: int
    # The global model on the eval subset.
    accuracy: float | None = None
    loss: float | None = None
    n: int | None = None  # eval items (round 0)
    # Each client's own model on its own held-out items, mean over clients (federation.client_holdout).
    heldout_accuracy: float | None = None
    heldout_loss: float | None = None
    # The clients whose updates were aggregated (sorted), their weights p_k and training.
    clients: list[int] | None = None
    weights: list[float] | None = None
    client_loss: float | None = None  # mean over clients of the example-weighted task loss
    client_update_norm: list[float] | None = None  # ||dW_k - dW_start_k||_F over all LoRA layers
    client_penalty: list[float] | None = None  # mean client penalty per optimizer step
    penalty_share: float | None = None  # mean over clients of penalty / (task loss + penalty)
    client_ranks: list[int] | None = None
    examples_trained: list[int] | None = None
    optimizer_steps: list[int] | None = None
    time_train_s: float | None = None
    time_aggregate_s: float | None = None
    time_geometry_s: float | None = None
    time_eval_s: float | None = None
    bytes_up: int | None = None  # what the clients' updates hold (see engine.upload_bytes)
    bytes_down: int | None = None
    geometry: dict[str, float] | None = None  # geometry.GEOMETRY_KEYS
    privacy_epsilon: float | None = None  # cumulative epsilon at privacy.delta after this round
    contribution_norms: list[float] | None = None  # DP: each client's contribution as received (privacy.py)
    # Flower engine: who was sampled and who failed, bytes as serialised, clients' own scores.
    sampled_clients: list[int] | None = None
    failed_clients: list[int] | None = None
    failure_reasons: dict[str, str] | None = None
    bytes_up_wire: int | None = None
    bytes_down_wire: int | None = None
    client_eval: dict[str, Any] | None = None
    # Per-item (scores (N, 4), labels (N,)) of an evaluated round: arrays for eval_items.npz,
    # never in metrics.jsonl (RunRecorder.record_round moves them).
    _eval_items: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def evaluated(self) -> bool:
        return self.accuracy is not None

    def geometry_value(self, key: str) -> float | None:
        return (self.geometry or {}).get(key)

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> "RoundRecord":
        return _from_json(cls, data, f"metrics record of round {data.get('round')}")


@dataclass
class RunSummary:
    """One finished run (summary.json): what ran, its scores and the last round's geometry."""

    method: str  # the label: a name, or a variant such as subspace:mu=0.5
    seed: int
    model: str
    best_accuracy: float
    best_round: int
    final_accuracy: float
    mean_last5_accuracy: float
    final_loss: float
    rounds: int
    wall_s: float = math.nan
    method_spec: dict[str, Any] | None = None  # methods.base.Method.spec
    final_heldout_accuracy: float | None = None
    basis_overlap: float | None = None
    basis_overlap_code: float | None = None
    cancellation_ratio_delta: float | None = None
    zero_shot_accuracy: float | None = None
    geometry_average: str = "equal weight over LoRA layers, then over sampled clients"
    machine: dict[str, Any] | None = None
    engine: str | None = None  # in-process | flower-simulation | flower-deployment
    # Flower engine
    clients_ever_failed: list[int] | None = None
    node_discovery_s: float | None = None
    nodes: dict[str, int] | None = None  # client index -> Flower node id

    def line(self) -> str:
        """One line of the finished run, as the command line prints it."""
        text = (f"{self.method} seed {self.seed}: best acc {self.best_accuracy:.4f} (round {self.best_round}), "
                f"final acc {self.final_accuracy:.4f}, final loss {self.final_loss:.4f}, "
                f"overlap {self.basis_overlap} / code {self.basis_overlap_code}")
        if self.engine and self.engine != "in-process":
            text += f" ({self.engine}; failed clients {self.clients_ever_failed or []})"
        return text

    def to_json(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_json(cls, data: dict) -> "RunSummary":
        return _from_json(cls, data, "run summary")
