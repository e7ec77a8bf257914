"""Client partitions and per-round client sampling."""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

from fedlora import config
from fedlora.config import FederationConfig
from fedlora.data import Item, read_items
from fedlora.partition import (
    Partition,
    dirichlet_partition,
    iid_partition,
    make_partition,
    num_sampled,
    partition_stats,
    sample_clients,
)


@pytest.fixture(scope="module")
def train_items() -> list[Item]:
    path = config.data_dir() / "hellaswag/hellaswag_train_3368.jsonl"
    if not path.is_file():
        where = "CI" if os.environ.get("CI") == "true" else "this machine"
        pytest.fail(f"shared data file {path} is missing on {where}; set FEDLORA_DATA_DIR to the shared data folder")
    return read_items(path)


@pytest.fixture(scope="module")
def train_labels(train_items) -> list[str]:
    return [it.activity_label for it in train_items]


def _quiet(msg: str) -> None:
    pass


def _assert_exact_cover(part: Partition, n: int) -> None:
    everything = np.concatenate(part.clients)
    assert len(everything) == n  # counts sum to the data
    assert np.array_equal(np.sort(everything), np.arange(n))  # every item exactly once


# --------------------------------------------------------------------------- dirichlet
def test_dirichlet_on_real_labels_covers_data_and_is_skewed(train_labels):
    part = dirichlet_partition(train_labels, 10, 0.3, seed=42, min_client_size=8, log=_quiet)
    assert part.scheme == "dirichlet" and part.fallback_reason is None
    _assert_exact_cover(part, len(train_labels))
    stats = partition_stats(part, train_labels)
    iid_stats = partition_stats(iid_partition(len(train_labels), 10, seed=42), train_labels)
    # Non-IID: clients see fewer labels and a much less even label mix than an IID split.
    assert stats["mean_label_entropy"] < iid_stats["mean_label_entropy"] - 0.5
    assert abs(stats["iid_reference_entropy"] - iid_stats["mean_label_entropy"]) < 0.05
    assert np.mean([c["num_labels"] for c in stats["clients"]]) < np.mean(
        [c["num_labels"] for c in iid_stats["clients"]]) * 0.8


def test_dirichlet_alpha_controls_label_concentration():
    labels = [f"L{i % 20}" for i in range(4000)]  # 20 labels x 200 items
    arr = np.asarray(labels)

    def max_share_per_label(alpha: float) -> float:
        part = dirichlet_partition(labels, 5, alpha, seed=0, min_client_size=0, log=_quiet)
        _assert_exact_cover(part, len(labels))
        owner = np.empty(len(labels), dtype=int)
        for k, idx in enumerate(part.clients):
            owner[idx] = k
        shares = [np.bincount(owner[arr == lab], minlength=5).max() / 200 for lab in set(labels)]
        return float(np.mean(shares))

    assert max_share_per_label(0.01) > 0.9  # each label almost entirely on one client
    assert max_share_per_label(1000.0) < 0.25  # close to the even 1/5 = 0.2 (floor + remainder)


def test_dirichlet_even_split_counts_follow_floor_plus_remainder():
    # With a huge alpha, p ~ 1/K, so every client gets floor(n/K) or one or two more per bucket.
    labels = ["a"] * 103 + ["b"] * 7
    part = dirichlet_partition(labels, 4, 1e6, seed=5, min_client_size=0, log=_quiet)
    arr = np.asarray(labels)
    for lab, n in (("a", 103), ("b", 7)):
        per_client = [int((arr[idx] == lab).sum()) for idx in part.clients]
        assert sum(per_client) == n
        assert min(per_client) >= n // 4 - 1 and max(per_client) <= n // 4 + 2


def test_dirichlet_identical_for_identical_seed(train_labels):
    a = dirichlet_partition(train_labels, 10, 0.3, seed=7, min_client_size=8, log=_quiet)
    b = dirichlet_partition(train_labels, 10, 0.3, seed=7, min_client_size=8, log=_quiet)
    c = dirichlet_partition(train_labels, 10, 0.3, seed=8, min_client_size=8, log=_quiet)
    assert all(np.array_equal(x, y) for x, y in zip(a.clients, b.clients))
    assert a.sizes != c.sizes


def test_fallback_triggers_exactly_below_min_client_size(train_labels):
    base = dirichlet_partition(train_labels, 10, 0.3, seed=42, min_client_size=1, log=_quiet)
    smallest = min(base.sizes)
    same = dirichlet_partition(train_labels, 10, 0.3, seed=42, min_client_size=smallest, log=_quiet)
    assert same.scheme == "dirichlet" and same.sizes == base.sizes

    messages: list[str] = []
    forced = dirichlet_partition(train_labels, 10, 0.3, seed=42, min_client_size=smallest + 1, log=messages.append)
    assert forced.scheme == "iid-fallback"
    assert f"only {smallest} items" in forced.fallback_reason
    assert len(messages) == 1 and "falling back" in messages[0]
    _assert_exact_cover(forced, len(train_labels))
    assert max(forced.sizes) - min(forced.sizes) <= 1  # round-robin


# --------------------------------------------------------------------------- iid
def test_iid_round_robin_sizes_and_shuffle():
    part = iid_partition(103, 10, seed=1)
    assert part.scheme == "iid"
    assert part.sizes == [11, 11, 11] + [10] * 7
    _assert_exact_cover(part, 103)
    assert not np.array_equal(part.clients[0], np.arange(0, 103, 10))  # shuffled before dealing
    assert all(np.array_equal(x, y) for x, y in zip(part.clients, iid_partition(103, 10, seed=1).clients))


# --------------------------------------------------------------------------- make_partition
def test_make_partition_uses_config(train_items):
    dirichlet = make_partition(train_items, FederationConfig(), seed=42, log=_quiet)
    assert dirichlet.scheme == "dirichlet"
    labels = [it.activity_label for it in train_items]
    direct = dirichlet_partition(labels, 10, 0.3, 42, 8, log=_quiet)
    assert all(np.array_equal(x, y) for x, y in zip(dirichlet.clients, direct.clients))
    iid = make_partition(train_items, FederationConfig(partition="iid", num_clients=4), seed=42, log=_quiet)
    assert iid.scheme == "iid" and len(iid.clients) == 4


def test_make_partition_rejects_empty_clients(train_items):
    with pytest.raises(ValueError, match=r"num_clients=10 with 6 train items leaves clients \[6, 7, 8, 9\] empty"):
        make_partition(train_items[:6], FederationConfig(partition="iid"), seed=0, log=_quiet)
    # Dirichlet falls back to IID first, which still cannot fill 10 clients from 6 items.
    with pytest.raises(ValueError, match="empty"):
        make_partition(train_items[:6], FederationConfig(min_client_size=1), seed=0, log=_quiet)


# --------------------------------------------------------------------------- stats
def test_partition_stats_values_and_json_ready():
    labels = ["x", "x", "y", "y", "z", "x"]
    part = Partition([np.array([0, 1, 5]), np.array([2, 3, 4])], "dirichlet")
    stats = partition_stats(part, labels)
    json.dumps(stats)  # JSON-ready (plain ints/floats/strings)
    c0, c1 = stats["clients"]
    assert (c0["size"], c0["num_labels"], c0["label_entropy"]) == (3, 1, 0.0)
    assert c0["top_labels"] == [["x", 3]]
    assert c1["num_labels"] == 2 and c1["top_labels"] == [["y", 2], ["z", 1]]
    h1 = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    assert c1["label_entropy"] == pytest.approx(h1, abs=1e-12)
    assert stats["mean_label_entropy"] == pytest.approx(h1 / 2, abs=1e-12)
    assert stats["pooled_label_entropy"] == pytest.approx(-sum(p * np.log(p) for p in (1 / 2, 1 / 3, 1 / 6)))
    assert (stats["num_items"], stats["size_min"], stats["size_max"], stats["num_labels"]) == (6, 3, 3, 3)


# --------------------------------------------------------------------------- sampling
def test_num_sampled_is_ceil_without_float_error():
    assert num_sampled(10, 0.3) == 3
    assert num_sampled(100, 0.07) == 7  # 100 * 0.07 = 7.000000000000001 in floats
    assert num_sampled(25, 0.28) == 7
    assert num_sampled(10, 0.31) == 4
    assert num_sampled(10, 1.0) == 10
    assert num_sampled(3, 0.01) == 1
    with pytest.raises(ValueError, match="fraction"):
        num_sampled(10, 0.0)


def test_sample_clients_reproducible_sorted_distinct():
    rounds = [sample_clients(42, t, 10, 0.3) for t in range(200)]
    assert rounds == [sample_clients(42, t, 10, 0.3) for t in range(200)]
    assert all(len(r) == 3 and r == sorted(set(r)) and 0 <= r[0] and r[-1] < 10 for r in rounds)
    assert len({tuple(r) for r in rounds}) > 50  # varies across rounds
    assert rounds != [sample_clients(43, t, 10, 0.3) for t in range(200)]
    # Generator contract: default_rng([seed, round]).
    expected = sorted(np.random.default_rng([42, 5]).choice(10, size=3, replace=False).tolist())
    assert rounds[5] == expected
    # Every client is sampled about fraction of the time.
    freq = Counter(k for r in rounds for k in r)
    assert all(0.2 < freq[k] / 200 < 0.4 for k in range(10))


def test_sample_clients_full_participation():
    assert sample_clients(0, 3, 7, 1.0) == list(range(7))


def test_client_ranks_are_listed_or_drawn_reproducibly():
    from fedlora.config import RankDraw
    from fedlora.partition import client_ranks

    assert client_ranks(FederationConfig(num_clients=3)) is None
    assert client_ranks(FederationConfig(num_clients=3, client_ranks=[8, 4, 2])) == [8, 4, 2]
    draw = FederationConfig(num_clients=50, client_ranks=RankDraw(choices=[2, 4, 8], seed=1))
    ranks = client_ranks(draw)
    assert ranks == client_ranks(draw) and set(ranks) == {2, 4, 8} and len(ranks) == 50
    assert ranks != client_ranks(FederationConfig(num_clients=50, client_ranks=RankDraw(choices=[2, 4, 8], seed=2)))
