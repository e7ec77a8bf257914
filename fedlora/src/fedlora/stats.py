"""Paired comparisons of two evaluations of the same items (e.g. final round vs zero-shot).

Two evaluations of one eval subset are paired: item i is scored twice. Pairing removes the
item-difficulty variance that an unpaired comparison of two accuracies would carry.

- Accuracy: exact McNemar test, i.e. a two-sided binomial test of the discordant items
  (b = right only after, c = right only before; under no change b ~ Bin(b + c, 1/2)). Its
  interval for the difference in accuracy (b - c) / n is the Clopper-Pearson interval of
  b / (b + c), mapped through (b + c) / n * (2p - 1): exact given the number of discordant items.
- Loss (per-item cross-entropy over the 4 scores): paired t interval, i.e. the t interval of
  the mean per-item difference (scipy.stats.ttest_rel).
- Several seeds on the same items: the item stays the independent unit. Each item's value
  (correctness, loss) is averaged over the seeds, then a paired t interval is taken over the items
  (`seed_averaged_difference`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import special, stats


@dataclass(frozen=True)
class PairedDifference:
    """after - before, with its `level` interval and the two-sided p-value of `test`."""

    before: float
    after: float
    diff: float
    low: float
    high: float
    p_value: float
    test: str
    level: float = 0.95


def _paired(before: np.ndarray, after: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    before, after = np.asarray(before), np.asarray(after)
    if before.ndim != 1 or before.shape != after.shape or before.size == 0:
        raise ValueError(f"{what}: expected two non-empty 1-D arrays of the same length (one value per "
                         f"item), got shapes {before.shape} and {after.shape}")
    return before, after


def accuracy_difference(before: np.ndarray, after: np.ndarray, level: float = 0.95) -> PairedDifference:
    """Paired accuracy difference from per-item correctness (booleans), by exact McNemar."""
    before, after = _paired(before, after, "accuracy_difference")
    before, after = before.astype(bool), after.astype(bool)
    n = before.size
    gained, lost = int(np.sum(after & ~before)), int(np.sum(before & ~after))
    discordant = gained + lost
    if discordant == 0:  # every item unchanged: no evidence of any difference, and none measured
        low = high = 0.0
        p_value = 1.0
    else:
        test = stats.binomtest(gained, discordant, 0.5)
        ci = test.proportion_ci(confidence_level=level, method="exact")
        low, high = (discordant / n * (2 * ci.low - 1), discordant / n * (2 * ci.high - 1))
        p_value = float(test.pvalue)
    return PairedDifference(before=float(before.mean()), after=float(after.mean()),
                            diff=(gained - lost) / n, low=low, high=high, p_value=p_value,
                            test="exact McNemar (binomial on discordant items), Clopper-Pearson interval",
                            level=level)


def loss_difference(before: np.ndarray, after: np.ndarray, level: float = 0.95) -> PairedDifference:
    """Paired difference of mean per-item loss, by a paired t interval."""
    before, after = _paired(before, after, "loss_difference")
    before, after = before.astype(np.float64), after.astype(np.float64)
    diff = after - before
    if before.size < 2 or np.all(diff == diff[0]):  # no spread: t is undefined, the difference exact
        low = high = float(diff.mean())
        p_value = 1.0 if low == 0 else float("nan")
    else:
        test = stats.ttest_rel(after, before)
        ci = test.confidence_interval(confidence_level=level)
        low, high, p_value = float(ci.low), float(ci.high), float(test.pvalue)
    return PairedDifference(before=float(before.mean()), after=float(after.mean()), diff=float(diff.mean()),
                            low=low, high=high, p_value=p_value, test="paired t interval", level=level)


def seed_averaged_difference(before: np.ndarray, after: np.ndarray, level: float = 0.95) -> PairedDifference:
    """Paired t interval over items of after - before, each item's value first averaged over seeds.

    `before` and `after` are (seeds, items) arrays: per-item correctness (booleans) or losses,
    row s of both from seed s, every row on the same items in the same order. The seeds repeat the
    items, so the seeds x items pairs are not independent; the items are. Each item's values are
    averaged over the seeds (correctness becomes the fraction of seeds that got it right), then
    the paired t interval and two-sided p-value of scipy.stats.ttest_rel are taken over the items.
    The interval is for these seeds' runs on a new draw of items: a shift that a seed gives every
    item alike is not part of it.
    """
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.ndim != 2 or before.shape != after.shape or before.size == 0:
        raise ValueError(f"seed_averaged_difference: expected two non-empty (seeds, items) arrays of the same "
                         f"shape, got shapes {before.shape} and {after.shape}")
    result = loss_difference(before.mean(axis=0), after.mean(axis=0), level)
    return replace(result, test="paired t interval over items of the per-item means over seeds")


def item_losses(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-item cross-entropy of softmax(scores (N, 4)) at the label, as the eval loss averages it."""
    scores = np.asarray(scores, dtype=np.float64)
    return -special.log_softmax(scores, axis=-1)[np.arange(len(labels)), labels]


def item_correct(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-item correctness of argmax(scores) (ties go to the first choice, as torch's argmax)."""
    return np.argmax(scores, axis=-1) == np.asarray(labels)
