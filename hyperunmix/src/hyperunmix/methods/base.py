"""The estimator interface every unmixing method shares (scikit-learn style)."""
from __future__ import annotations

import time

import numpy as np


def check_cube(cube: np.ndarray, n_endmembers: int) -> np.ndarray:
    """Validate an H x W x L cube and return it as float64."""
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"cube must have shape (H, W, L), got an array of shape {cube.shape}")
    if not np.issubdtype(cube.dtype, np.number):
        raise ValueError(f"cube must be numeric, got dtype {cube.dtype}")
    if not np.all(np.isfinite(cube)):
        raise ValueError("cube contains NaN or infinite values")
    h, w, bands = cube.shape
    if n_endmembers < 2 or n_endmembers > min(h * w, bands):
        raise ValueError(
            f"n_endmembers={n_endmembers} must be between 2 and min(pixels, bands) = {min(h * w, bands)}"
        )
    return cube.astype(np.float64, copy=False)


class Unmixer:
    """Base class: `fit(cube)` learns `endmembers_` (L x p) and `abundances_` (p x H x W).

    Subclasses implement `_fit(Y, H, W) -> (E, A)` with Y the L x N pixel matrix in row-major
    pixel order (pixel = row * W + col), E of shape (L, p) and A of shape (p, N).
    """

    def __init__(self, n_endmembers: int, random_state: int | None = None):
        self.n_endmembers = n_endmembers
        self.random_state = random_state

    def fit(self, cube: np.ndarray, y=None) -> "Unmixer":
        cube = check_cube(cube, self.n_endmembers)
        h, w, bands = cube.shape
        Y = cube.reshape(h * w, bands).T
        self.history_: dict[str, list[float]] = {}
        start = time.perf_counter()
        E, A = self._fit(Y, h, w)
        self.fit_time_ = time.perf_counter() - start
        self.endmembers_ = np.asarray(E, dtype=np.float64)
        self.abundances_ = np.asarray(A, dtype=np.float64).reshape(self.n_endmembers, h, w)
        return self

    def fit_transform(self, cube: np.ndarray, y=None) -> np.ndarray:
        return self.fit(cube).abundances_

    def _fit(self, Y: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def get_params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
