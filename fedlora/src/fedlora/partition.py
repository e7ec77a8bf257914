"""Non-IID client partitions (Dirichlet over activity labels, or IID) and per-round client sampling."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from fedlora.config import FederationConfig
from fedlora.data import Item

# Seed of the IID split used as the entropy reference in `partition_stats`.
_IID_REFERENCE_SEED = 0


@dataclass
class Partition:
    clients: list[np.ndarray]  # item indices per client, sorted
    scheme: str  # "dirichlet" | "iid" | "iid-fallback"
    fallback_reason: str | None = None

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.clients]


def iid_partition(n_items: int, num_clients: int, seed: int) -> Partition:
    """Shuffle the items with `seed`, then deal them round-robin to the clients."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    order = np.random.default_rng(seed).permutation(n_items)
    return Partition([np.sort(order[k::num_clients]) for k in range(num_clients)], "iid")


def dirichlet_partition(
    labels: Sequence[str],
    num_clients: int,
    alpha: float,
    seed: int,
    min_client_size: int,
    log: Callable[[str], Any] = print,
) -> Partition:
    """Per label bucket: shuffle, p ~ Dir(alpha * 1_K), counts = floor(p * n), remainder handed
    one item at a time to uniformly random clients, contiguous slices of the shuffled bucket.

    Buckets are visited in sorted label order so the result depends only on (labels, seed).
    Falls back to `iid_partition` (scheme "iid-fallback") when a client gets fewer than
    `min_client_size` items.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    labels_arr = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in sorted(set(labels_arr.tolist())):
        bucket = np.flatnonzero(labels_arr == label)
        rng.shuffle(bucket)
        p = rng.dirichlet(np.full(num_clients, alpha))
        counts = np.floor(p * len(bucket)).astype(np.int64)
        for _ in range(len(bucket) - int(counts.sum())):
            counts[rng.integers(num_clients)] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for k in range(num_clients):
            parts[k].append(bucket[bounds[k]:bounds[k + 1]])
    clients = [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
    sizes = [len(c) for c in clients]
    smallest = int(np.argmin(sizes))
    if sizes[smallest] < min_client_size:
        reason = (f"dirichlet split (alpha={alpha}) gave client {smallest} only {sizes[smallest]} items "
                  f"< min_client_size={min_client_size}")
        log(f"partition: {reason}; falling back to an IID round-robin split")
        fallback = iid_partition(len(labels_arr), num_clients, seed)
        return Partition(fallback.clients, "iid-fallback", reason)
    return Partition(clients, "dirichlet")


def make_partition(items: Sequence[Item], fed_cfg: FederationConfig, seed: int,
                   log: Callable[[str], Any] = print) -> Partition:
    """Partition per the federation config; every client must end with at least one item."""
    if fed_cfg.partition == "dirichlet":
        part = dirichlet_partition([it.activity_label for it in items], fed_cfg.num_clients,
                                   fed_cfg.dirichlet_alpha, seed, fed_cfg.min_client_size, log)
    else:
        part = iid_partition(len(items), fed_cfg.num_clients, seed)
    empty = [k for k, c in enumerate(part.clients) if len(c) == 0]
    if empty:
        raise ValueError(f"federation.num_clients={fed_cfg.num_clients} with {len(items)} train items leaves "
                         f"clients {empty} empty; use fewer clients or a larger data.train_size")
    return part


def _entropy(counts: Sequence[int]) -> float:
    """Shannon entropy in nats of a count vector."""
    c = np.asarray([x for x in counts if x > 0], dtype=np.float64)
    if c.size == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def _mean_client_entropy(clients: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([_entropy(list(Counter(labels[c].tolist()).values())) for c in clients]))


def partition_stats(partition: Partition, labels: Sequence[str], top: int = 3) -> dict[str, Any]:
    """JSON-ready per-client sizes and label statistics.

    `iid_reference_entropy` is the mean per-client label entropy of an IID split of the same
    items into the same number of clients (seed 0): plug-in entropy of a small sample is biased
    low, so this, not `pooled_label_entropy`, is the fair bar for "less diverse than IID".
    """
    labels_arr = np.asarray(labels, dtype=object)
    per_client = []
    for k, idx in enumerate(partition.clients):
        counts = Counter(labels_arr[idx].tolist())
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        per_client.append({
            "client": k,
            "size": int(len(idx)),
            "num_labels": len(counts),
            "label_entropy": _entropy(list(counts.values())),
            "top_labels": [[label, int(n)] for label, n in ranked],
        })
    sizes = [c["size"] for c in per_client]
    reference = iid_partition(len(labels_arr), len(partition.clients), _IID_REFERENCE_SEED)
    return {
        "scheme": partition.scheme,
        "fallback_reason": partition.fallback_reason,
        "num_clients": len(partition.clients),
        "num_items": int(sum(sizes)),
        "num_labels": len(set(labels_arr.tolist())),
        "size_min": int(min(sizes)),
        "size_max": int(max(sizes)),
        "size_mean": float(np.mean(sizes)),
        "mean_label_entropy": float(np.mean([c["label_entropy"] for c in per_client])),
        "iid_reference_entropy": _mean_client_entropy(reference.clients, labels_arr),
        "pooled_label_entropy": _entropy(list(Counter(labels_arr.tolist()).values())),
        "clients": per_client,
    }


def num_sampled(num_clients: int, fraction: float) -> int:
    """ceil(K * fraction), robust to float error (100 * 0.07 = 7.000000000000001 -> 7), in [1, K]."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return min(num_clients, max(1, math.ceil(round(num_clients * fraction, 9))))


def sample_clients(seed: int, round_idx: int, num_clients: int, fraction: float) -> list[int]:
    """Sorted distinct clients of one round; the generator depends only on (seed, round_idx),
    so every method of one seed trains the same clients in the same round."""
    rng = np.random.default_rng([seed, round_idx])
    chosen = rng.choice(num_clients, size=num_sampled(num_clients, fraction), replace=False)
    return sorted(int(k) for k in chosen)


def client_ranks(cfg: FederationConfig) -> list[int] | None:
    """Each client's LoRA rank (federation.client_ranks), or None when every client trains lora.r."""
    ranks = cfg.client_ranks
    if ranks is None or isinstance(ranks, list):
        return None if ranks is None else list(ranks)  # a copy: self-pruning changes it during the run
    drawn = np.random.default_rng(ranks.seed).choice(ranks.choices, size=cfg.num_clients)
    return [int(r) for r in drawn]


def split_holdout(partition: Partition, holdout: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per client, (items it trains on, `holdout` items it never trains on): a seeded draw from
    each client's own partition, so held-out items follow the client's label skew."""
    train, held = [], []
    for k, items in enumerate(partition.clients):
        if holdout >= len(items):
            raise ValueError(f"federation.client_holdout={holdout} leaves client {k} ({len(items)} items) "
                             f"nothing to train on")
        order = np.random.default_rng([seed, k]).permutation(len(items))
        held.append(np.sort(items[order[:holdout]]))
        train.append(np.sort(items[order[holdout:]]))
    return train, held
