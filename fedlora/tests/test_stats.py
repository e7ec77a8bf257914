"""Paired tests of stats.py against worked examples computed by hand, and against scipy.stats."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedlora.stats import (
    accuracy_difference,
    item_correct,
    item_losses,
    loss_difference,
    seed_averaged_difference,
)


def test_accuracy_difference_matches_the_worked_mcnemar_example():
    # 20 items: 7 gained (wrong -> right), 2 lost, 5 right both times, 6 wrong both times.
    before = np.array([0] * 7 + [1] * 2 + [1] * 5 + [0] * 6, dtype=bool)
    after = np.array([1] * 7 + [0] * 2 + [1] * 5 + [0] * 6, dtype=bool)
    d = accuracy_difference(before, after)
    assert (d.before, d.after, d.diff) == (7 / 20, 12 / 20, 5 / 20)
    # Exact McNemar: 2 * P(X <= 2), X ~ Bin(9, 1/2) = 2 * (1 + 9 + 36) / 512.
    assert d.p_value == pytest.approx(92 / 512, rel=1e-12)
    # Clopper-Pearson for 7 of 9: [Beta(.025; 7, 3), Beta(.975; 8, 2)] = [0.3999064263, 0.9718550265],
    # mapped through 9/20 * (2p - 1). Tolerance 1e-9: the quantiles are printed to 10 digits.
    assert d.low == pytest.approx(9 / 20 * (2 * 0.3999064263 - 1), abs=1e-9)
    assert d.high == pytest.approx(9 / 20 * (2 * 0.9718550265 - 1), abs=1e-9)
    assert d.low < d.diff < d.high


def test_unchanged_items_give_a_zero_difference_with_p_one():
    same = np.array([True, False, True])
    d = accuracy_difference(same, same)
    assert (d.diff, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_loss_difference_is_the_paired_t_interval():
    # Differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.2909944, se 0.6454972;
    # t(0.975, 3 df) = 3.1824463, half-width 2.0542603; t = 3.8729833, two-sided p = 0.0304663.
    before = np.ones(4)
    after = np.array([2.0, 3.0, 4.0, 5.0])
    d = loss_difference(before, after)
    assert (d.before, d.after, d.diff) == (1.0, 3.5, 2.5)
    assert d.low == pytest.approx(2.5 - 2.0542603, abs=1e-6)  # 8 printed digits
    assert d.high == pytest.approx(2.5 + 2.0542603, abs=1e-6)
    assert d.p_value == pytest.approx(0.0304663, abs=1e-6)


def test_item_losses_and_correctness_from_scores():
    scores = np.array([[0.0, 0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    labels = np.array([0, 0, 2])
    # softmax of (ln 2, 0, 0, 0) at 0 is 2/5; all-equal scores give ln 4 and argmax's first choice.
    assert item_losses(scores, labels)[:2] == pytest.approx([math.log(4), -math.log(2 / 5)], rel=1e-12)
    assert item_correct(scores, labels).tolist() == [True, True, False]


@pytest.mark.parametrize("before, after", [(np.ones(3), np.ones(4)), (np.ones((2, 2)), np.ones((2, 2))),
                                           (np.ones(0), np.ones(0))])
def test_unpaired_inputs_are_refused(before, after):
    with pytest.raises(ValueError, match="same length"):
        loss_difference(before, after)
    with pytest.raises(ValueError, match="same length"):
        accuracy_difference(before, after)


def test_seed_averaged_difference_is_a_paired_t_over_the_item_means():
    # 2 seeds x 4 items whose per-item mean differences are 1, 2, 3, 4: the worked example of
    # test_loss_difference_is_the_paired_t_interval (mean 2.5, half-width 2.0542603, p 0.0304663).
    before = np.array([[1.0, 0.0, 2.0, 1.0], [1.0, 2.0, 0.0, 1.0]])
    after = np.array([[2.0, 2.0, 4.0, 6.0], [2.0, 4.0, 4.0, 4.0]])
    d = seed_averaged_difference(before, after)
    assert (d.before, d.after, d.diff) == (1.0, 3.5, 2.5)
    assert d.low == pytest.approx(2.5 - 2.0542603, abs=1e-6)
    assert d.high == pytest.approx(2.5 + 2.0542603, abs=1e-6)
    assert d.p_value == pytest.approx(0.0304663, abs=1e-6)
    assert "over items" in d.test


def test_seed_averaged_difference_of_correctness_matches_scipy():
    rng = np.random.default_rng(1)
    before, after = rng.random((3, 50)) < 0.4, rng.random((3, 50)) < 0.6
    d = seed_averaged_difference(before, after)
    # Independently: the one-sample t test of the per-item differences of the fractions right.
    diffs = after.mean(axis=0) - before.mean(axis=0)
    test = stats.ttest_1samp(diffs, 0.0)
    ci = test.confidence_interval(0.95)
    assert d.diff == pytest.approx(diffs.mean(), rel=1e-12)
    assert (d.low, d.high, d.p_value) == pytest.approx((ci.low, ci.high, test.pvalue), rel=1e-10)
    assert (d.before, d.after) == pytest.approx((before.mean(), after.mean()), rel=1e-12)


@pytest.mark.parametrize("before, after", [(np.ones((2, 3)), np.ones((3, 3))), (np.ones(3), np.ones(3)),
                                           (np.ones((2, 0)), np.ones((2, 0)))])
def test_seed_averaged_difference_refuses_other_shapes(before, after):
    with pytest.raises(ValueError, match="seeds, items"):
        seed_averaged_difference(before, after)
