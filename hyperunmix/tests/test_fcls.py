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
    # 1e-6: the reference enforces sum-to-one by a penalty row of weight 1e5, exact only to
    # about 1/delta and NNLS's own stopping tolerance; ours is exact to rounding.
    np.testing.assert_allclose(A, fcls_per_pixel(Y, E), atol=1e-6)
    assert A.min() >= 0.0
    np.testing.assert_allclose(A.sum(axis=0), 1.0, atol=1e-12)
    assert (A == 0).any(), "the test problems should exercise the non-negativity constraint"


def test_recovers_exact_abundances_of_noiseless_mixtures():
    rng = np.random.default_rng(3)
    E = rng.uniform(0, 1, (40, 5))
    A_true = rng.dirichlet(np.full(5, 0.5), 500).T
    # 1e-9: rounding of the face solves (~1e-14) times the Gram matrix's condition number.
    np.testing.assert_allclose(fcls(E @ A_true, E), A_true, atol=1e-9)


def test_tiny_true_abundances_are_kept_whatever_the_blas_kernel():
    # Abundances of 1e-6..1e-10 make the full face and the face without that endmember tie to
    # rounding (their objectives differ by ~a^2); a solver that lets rounding choose zeroes
    # about a third of them, on every OpenBLAS kernel tried. The larger face must win.
    rng = np.random.default_rng(0)
    E = rng.uniform(0, 1, (50, 4))
    tiny = np.logspace(-6, -10, 200)
    A_true = np.vstack([rng.dirichlet(np.ones(3), 200).T * (1 - tiny), tiny])
    A = fcls(E @ A_true, E)
    assert np.all(A[3] > 0)
    # 1e-12: the face solve's rounding error on a well-conditioned 4-endmember system.
    np.testing.assert_allclose(A, A_true, atol=1e-12)


def test_optimality_no_feasible_point_does_better():
    rng = np.random.default_rng(4)
    E = rng.uniform(0, 1, (15, 4))
    Y = rng.uniform(0, 1, (15, 50))
    A = fcls(Y, E)
    best = np.sum((Y - E @ A) ** 2, axis=0)
    for _ in range(200):
        other = rng.dirichlet(np.ones(4), 50).T
        # 1e-12: rounding of the squared residuals, which are O(1) here.
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
