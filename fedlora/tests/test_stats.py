"""Paired tests of stats.py against worked examples computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedlora.stats import accuracy_difference, item_correct, item_losses, loss_difference


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
