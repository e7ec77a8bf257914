"""Metrics on arrays with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from hyperunmix.metrics import armse, match_endmembers, reconstruction_rmse, sad, score, sre_db


def test_sad_zero_for_identical_and_scale_invariant():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.1, 1, 50)
    assert sad(v, v) == pytest.approx(0.0, abs=1e-7)
    u = rng.uniform(0.1, 1, 50)
    assert sad(3.7 * u, 0.2 * v) == pytest.approx(sad(u, v), abs=1e-12)
    assert sad([1, 0], [0, 1]) == pytest.approx(np.pi / 2)
    assert sad([1, 0], [1, 1]) == pytest.approx(np.pi / 4)
    with pytest.raises(ValueError, match="same length"):
        sad([1, 2], [1, 2, 3])


def test_hungarian_recovers_planted_permutation():
    rng = np.random.default_rng(1)
    E = rng.uniform(0, 1, (30, 5))
    perm = np.array([3, 0, 4, 1, 2])
    E_hat = np.empty_like(E)
    E_hat[:, perm] = E * rng.uniform(0.5, 2, 5) + rng.normal(0, 0.01, E.shape)
    np.testing.assert_array_equal(match_endmembers(E_hat, E), perm)


def test_hungarian_beats_greedy_assignment():
    # Greedy would give true 0 -> estimate 0 (angle 0.1) and force true 1 onto estimate 1 (far).
    E_true = np.array([[1.0, 1.0], [0.0, 0.3]])
    E_hat = np.column_stack([[1.0, 0.25], [1.0, -0.8]])
    perm = match_endmembers(E_hat, E_true)
    total = sum(sad(E_hat[:, perm[k]], E_true[:, k]) for k in range(2))
    other = sum(sad(E_hat[:, 1 - perm[k]], E_true[:, k]) for k in range(2))
    assert total <= other


def test_armse_and_sre_on_known_arrays():
    A_true = np.array([[1.0, 0.0, 0.5, 0.5], [0.0, 1.0, 0.5, 0.5]])
    A_hat = A_true + np.array([[0.1, 0.0, -0.1, 0.0], [-0.1, 0.0, 0.1, 0.0]])
    assert armse(A_hat, A_true) == pytest.approx(np.sqrt(4 * 0.01 / 8))
    assert sre_db(A_hat, A_true) == pytest.approx(10 * np.log10(3.0 / 0.04))
    assert armse(A_hat.reshape(2, 2, 2), A_true.reshape(2, 2, 2)) == armse(A_hat, A_true)


def test_score_matches_then_scores_in_true_order():
    rng = np.random.default_rng(2)
    E = rng.uniform(0.1, 1, (20, 3))
    A = rng.dirichlet(np.ones(3), 60).T
    perm = np.array([2, 0, 1])
    E_hat, A_hat = np.empty_like(E), np.empty_like(A)
    E_hat[:, perm], A_hat[perm] = E, A
    A_hat[perm[1]] += 0.2  # only the second true material's abundances are wrong
    result = score(E_hat, A_hat.reshape(3, 6, 10), E, A, Y=E @ A)
    assert result["matching"] == perm.tolist()
    assert result["matching_method"] == "hungarian-sad"
    assert result["mean_sad_deg"] == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(result["armse_per_endmember"], [0.0, 0.2, 0.0], atol=1e-12)
    assert result["armse"] == pytest.approx(np.sqrt(0.04 / 3))
    assert result["armse_x100"] == pytest.approx(100 * result["armse"])
    assert result["reconstruction_rmse"] == pytest.approx(reconstruction_rmse(E @ A, E_hat, A_hat))
    assert result["reconstruction_rmse"] > 0
    assert set(result) >= {"mean_sad_rad", "sad_deg", "sad_rad", "sre_db"}
    with pytest.raises(ValueError, match="must have the same shape"):
        score(E_hat, A_hat[:, :10], E, A)
