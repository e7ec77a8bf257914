"""Shared fixtures: one BLAS/torch thread (the test machine is small and shared), data lookup
that fails loudly when the shared scenes are missing."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(1)
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # torch is a dependency; this only keeps data tests importable without it
    pass

from hyperunmix.datasets import DATA_ENV, SCENE_SUBDIR, data_dir  # noqa: E402
from hyperunmix.scene import Scene  # noqa: E402


def require_scene_file(filename: str):
    path = data_dir() / SCENE_SUBDIR / filename
    if not path.exists():
        pytest.fail(
            f"shared scene {filename} not found in {path.parent}; set {DATA_ENV} to the shared data "
            "directory (default ../shared/data from the repository root)"
        )
    return path


@pytest.fixture
def hsi_file():
    return require_scene_file


def planted_scene(H: int = 12, W: int = 17, L: int = 30, p: int = 4, seed: int = 0) -> Scene:
    """A noiseless non-square scene: one pure pixel per endmember at random positions, the
    other pixels Dirichlet mixtures."""
    rng = np.random.default_rng(seed)
    E = rng.uniform(0.05, 1.0, (L, p))
    A = rng.dirichlet(np.ones(p), size=H * W).T
    pure = rng.choice(H * W, size=p, replace=False)
    A[:, pure] = np.eye(p)
    return Scene(Y=E @ A, H=H, W=W, E=E, A=A, name="planted", meta={"pure": pure})


@pytest.fixture
def planted():
    return planted_scene()
