"""Synthetic scenes: simplex abundances, purity, spatial smoothness, SNR, bilinear terms."""
from __future__ import annotations

import numpy as np
import pytest

from hyperunmix.synthetic import make_synthetic


def test_abundances_on_simplex_with_requested_pure_share():
    scene = make_synthetic(H=30, W=40, p=3, purity=0.1, snr_db=None, seed=1)
    assert scene.A.shape == (3, 1200) and scene.Y.shape == (scene.E.shape[0], 1200)
    assert scene.A.min() >= 0
    np.testing.assert_allclose(scene.A.sum(axis=0), 1.0)
    pure = scene.A.max(axis=0) == 1.0
    assert pure.mean() == pytest.approx(0.1, abs=1 / 1200)
    assert all((scene.A[k, pure] == 1).sum() == 40 for k in range(3))  # every material has pure pixels
    np.testing.assert_allclose(scene.Y, scene.E @ scene.A)


def test_abundances_are_spatially_smooth():
    maps = make_synthetic(H=40, W=40, p=3, purity=0.0, snr_db=None, seed=2).abundance_maps
    neighbour_gap = np.abs(np.diff(maps, axis=2)).mean()
    shuffled = np.random.default_rng(0).permutation(maps.reshape(3, -1), axis=1).reshape(maps.shape)
    assert neighbour_gap < 0.3 * np.abs(np.diff(shuffled, axis=2)).mean()


def test_noise_at_requested_snr():
    clean = make_synthetic(H=50, W=50, snr_db=None, seed=3)
    noisy = make_synthetic(H=50, W=50, snr_db=20.0, seed=3)
    noise = noisy.Y - clean.Y
    snr = 10 * np.log10(np.mean(clean.Y**2) / np.mean(noise**2))
    assert snr == pytest.approx(20.0, abs=0.2)


def test_bilinear_adds_fan_terms():
    linear = make_synthetic(H=10, W=12, p=3, snr_db=None, seed=4)
    bilinear = make_synthetic(H=10, W=12, p=3, snr_db=None, seed=4, bilinear=True)
    E, A = linear.E, linear.A
    extra = sum(np.outer(E[:, i] * E[:, j], A[i] * A[j]) for i in range(3) for j in range(i + 1, 3))
    np.testing.assert_allclose(bilinear.Y - linear.Y, extra, atol=1e-12)


def test_seeded_and_distinct_library():
    a, b = make_synthetic(seed=5), make_synthetic(seed=5)
    np.testing.assert_array_equal(a.Y, b.Y)
    assert not np.array_equal(a.Y, make_synthetic(seed=6).Y)
    unit = a.E / np.linalg.norm(a.E, axis=0)
    angles = np.degrees(np.arccos(np.clip(unit.T @ unit, -1, 1)))[np.triu_indices(a.p, 1)]
    assert angles.min() >= 8.0


def test_real_library_uses_ground_truth_spectra(hsi_file):
    hsi_file("jasper_ridge.mat")
    hsi_file("samson.mat")
    from hyperunmix.datasets import load_dataset

    scene = make_synthetic(H=8, W=9, library="real", p=5, seed=0)
    jasper = load_dataset("jasper-ridge")
    assert scene.E.shape == (198, 5)
    from_jasper = [name for name in scene.material_names if not name.startswith("samson-")]
    for name in from_jasper:
        np.testing.assert_array_equal(scene.E[:, scene.material_names.index(name)],
                                      jasper.E[:, jasper.material_names.index(name)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="library must be"):
        make_synthetic(library="usgs")
    with pytest.raises(ValueError, match="purity must be in"):
        make_synthetic(purity=1.5)
