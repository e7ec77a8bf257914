"""The estimator interface every unmixing method shares (scikit-learn style).

Parameters are checked when `fit` runs, as scikit-learn estimators do: each class lists
`_parameter_constraints` (types, ranges, allowed strings) and scikit-learn's validator raises
an error that names the parameter, what it must be and what it got.
"""
from __future__ import annotations

import time
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, validate_parameter_constraints

from hyperunmix.validation import check_cube

# Shared constraint shapes (scikit-learn's `Interval`), e.g. epochs >= 0, learning rates > 0.
NON_NEGATIVE_INT = Interval(Integral, 0, None, closed="left")
POSITIVE_INT = Interval(Integral, 1, None, closed="left")
NON_NEGATIVE_REAL = Interval(Real, 0, None, closed="left")
POSITIVE_REAL = Interval(Real, 0, None, closed="neither")
UNIT_INTERVAL = Interval(Real, 0, 1, closed="both")


class Unmixer:
    """Base class: `fit(cube)` learns `endmembers_` (L x p) and `abundances_` (p x H x W).

    Subclasses implement `_fit(Y, H, W) -> (E, A)` with Y the L x N pixel matrix in row-major
    pixel order (pixel = row * W + col), E of shape (L, p) and A of shape (p, N), and extend
    `_parameter_constraints` with one entry per constructor parameter.
    """

    _parameter_constraints: dict = {
        "n_endmembers": [Interval(Integral, 2, None, closed="left")],
        # Seeds reach numpy, torch and scikit-learn; the last takes 0 <= seed < 2**32.
        "random_state": [Interval(Integral, 0, 2**32 - 1, closed="both"), None],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None):
        self.n_endmembers = n_endmembers
        self.random_state = random_state

    def validate_params(self) -> None:
        """Raise an error naming the first parameter outside its constraints. `fit` calls it; a
        caller may call it earlier, to refuse a bad parameter before preparing anything else."""
        validate_parameter_constraints(self._parameter_constraints, self.get_params(), type(self).__name__)

    def fit(self, cube: np.ndarray, y=None) -> "Unmixer":
        self.validate_params()
        check_cube(cube, "cube")
        cube = np.asarray(cube).astype(np.float64, copy=False)
        h, w, bands = cube.shape
        if self.n_endmembers > min(h * w, bands):
            raise ValueError(
                f"n_endmembers={self.n_endmembers} must be between 2 and min(pixels, bands) = {min(h * w, bands)}"
            )
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
