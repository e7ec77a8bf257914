"""FCLSU: exact against the reference NNLS solver, both constraints, batched."""
from __future__ import annotations

import numpy as np
import pytest

from hyperunmix.fcls import fcls, fcls_per_pixel


@pytest.mark.parametrize("p", [2, 3, 4, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_scipy_nnls_on_augmented_system(p, seed):
    rng = np.random.default_rng(seed)
    E = rng.uniform(0, 1, (25, p))
    # Mixtures plus points outside the simplex, so many pixels have active constraints.
    Y = E @ rng.dirichlet(np.ones(p), 200).T + rng.normal(0, 0.3, (25, 200))
    A = fcls(Y, E)
    np.testing.assert_allclose(A, fcls_per_pixel(Y, E), atol=1e-6)
    assert A.min() >= 0.0
    np.testing.assert_allclose(A.sum(axis=0), 1.0, atol=1e-12)
    assert (A == 0).any(), "the test problems should exercise the non-negativity constraint"


def test_recovers_exact_abundances_of_noiseless_mixtures():
    rng = np.random.default_rng(3)
    E = rng.uniform(0, 1, (40, 5))
    A_true = rng.dirichlet(np.full(5, 0.5), 500).T
    np.testing.assert_allclose(fcls(E @ A_true, E), A_true, atol=1e-9)


def test_optimality_no_feasible_point_does_better():
    rng = np.random.default_rng(4)
    E = rng.uniform(0, 1, (15, 4))
    Y = rng.uniform(0, 1, (15, 50))
    A = fcls(Y, E)
    best = np.sum((Y - E @ A) ** 2, axis=0)
    for _ in range(200):
        other = rng.dirichlet(np.ones(4), 50).T
        assert np.all(np.sum((Y - E @ other) ** 2, axis=0) >= best - 1e-12)


def test_chunking_and_single_pixel_and_collinear_endmembers():
    rng = np.random.default_rng(5)
    E = rng.uniform(0, 1, (10, 3))
    Y = rng.uniform(0, 1, (10, 37))
    np.testing.assert_allclose(fcls(Y, E, chunk_size=8), fcls(Y, E), atol=1e-12)
    np.testing.assert_allclose(fcls(Y[:, 0], E)[:, 0], fcls(Y, E)[:, 0], atol=1e-12)
    E_dup = np.hstack([E, E[:, :1]])  # singular Gram matrix must not break the solver
    A = fcls(Y, E_dup)
    np.testing.assert_allclose(A.sum(axis=0), 1.0)
    np.testing.assert_allclose(E_dup @ A, E @ fcls(Y, E), atol=1e-8)


def test_shape_errors_name_the_arrays():
    with pytest.raises(ValueError, match="Y has 5 bands but E has 4 rows"):
        fcls(np.ones((5, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        fcls(np.full((4, 3), np.nan), np.ones((4, 2)))


def test_jasper_ridge_with_true_endmembers_reaches_oracle_figure(hsi_file):
    from hyperunmix.datasets import load_dataset
    from hyperunmix.metrics import armse

    hsi_file("jasper_ridge.mat")
    scene = load_dataset("jasper-ridge")
    A = fcls(scene.Y, scene.E)
    assert armse(A, scene.A) == pytest.approx(0.0851, abs=5e-4)
    subset = slice(0, 400)
    np.testing.assert_allclose(A[:, subset], fcls_per_pixel(scene.Y[:, subset], scene.E), atol=1e-6)
