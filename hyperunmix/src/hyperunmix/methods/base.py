"""The estimator interface every unmixing method shares: scikit-learn estimators.

Every method is a `BaseEstimator` (so `get_params`, `set_params`, `clone`, grid search work) and
a `TransformerMixin`: `fit(cube)` learns endmembers and abundances, `transform(cube)` gives the
abundances of a new cube with the fitted bands. Constructors only store their parameters;
parameters are checked when `fit` runs, as scikit-learn estimators do: each class lists
`_parameter_constraints` (types, ranges, allowed strings) and scikit-learn's validator raises
an error that names the parameter, what it must be and what it got.

Scenes of any size: a scene of at most `sample_size` pixels is fitted whole in memory, in
float64, exactly as on the standard scenes. A larger one is never copied whole: the cube (a
memory-mapped file, say) is read in blocks of image rows, the method fits on a seeded random
sample of `sample_size` pixels (the deep methods on minibatches read from the cube), and the
abundances of every pixel come from `transform`, tile by tile. Peak memory is then set by
`sample_size` and the tile size, not by the scene.
"""
from __future__ import annotations

import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval

from hyperunmix.blocks import BLOCK_PIXELS, iter_row_blocks, sample_pixels
from hyperunmix.fcls import fcls
from hyperunmix.validation import check_cube

# Shared constraint shapes (scikit-learn's `Interval`), e.g. epochs >= 0, learning rates > 0.
NON_NEGATIVE_INT = Interval(Integral, 0, None, closed="left")
POSITIVE_INT = Interval(Integral, 1, None, closed="left")
NON_NEGATIVE_REAL = Interval(Real, 0, None, closed="left")
POSITIVE_REAL = Interval(Real, 0, None, closed="neither")
UNIT_INTERVAL = Interval(Real, 0, 1, closed="both")
# Pixels per tile of `transform`: tiles of whole image rows keep memory bounded on large cubes
# (64k pixels x 200 bands in float64 is 100 MiB); fcls solves in chunks of the same size.
TILE_PIXELS = BLOCK_PIXELS
# Scenes with more pixels than this are fitted on a sample of this many. Above the standard
# scenes (Samson 9025, Jasper Ridge 10000 pixels), whose results stay those of the whole-scene
# fit; 50k pixels x 200 bands is 80 MiB in float64, and a GAUSS epoch over 50k neighbourhoods
# takes about a minute on two cores.
SAMPLE_SIZE = 50_000


class Unmixer(TransformerMixin, BaseEstimator):
    """Base class: `fit(cube)` learns `endmembers_` (L x p) and `abundances_` (p x H x W);
    `transform(cube)` returns the abundances (p x H x W) of a cube with the same bands.

    Subclasses implement `_fit(Y, H, W) -> (E, A)` with Y the L x N pixel matrix in row-major
    pixel order (pixel = row * W + col), E of shape (L, p) and A of shape (p, N), and extend
    `_parameter_constraints` with one entry per constructor parameter. The default `transform`
    is FCLSU with the fitted endmembers (the linear methods); networks override `_transform`.
    """

    _parameter_constraints: dict = {
        "n_endmembers": [Interval(Integral, 2, None, closed="left")],
        # Seeds reach numpy, torch and scikit-learn; the last takes 0 <= seed < 2**32.
        "random_state": [Interval(Integral, 0, 2**32 - 1, closed="both"), None],
        "sample_size": [Interval(Integral, 2, None, closed="left")],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, sample_size: int = SAMPLE_SIZE):
        self.n_endmembers = n_endmembers
        self.random_state = random_state
        self.sample_size = sample_size

    def validate_params(self) -> None:
        """Raise an error naming the first parameter outside its constraints. `fit` calls it; a
        caller may call it earlier, to refuse a bad parameter before preparing anything else."""
        self._validate_params()

    def fit(self, cube: np.ndarray, y=None) -> "Unmixer":
        """Learn `endmembers_` and `abundances_` of an H x W x L cube (any array, a memory map
        included); see the module's note on scenes larger than `sample_size` pixels."""
        self.validate_params()
        check_cube(cube, "cube")
        cube = cube if isinstance(cube, np.ndarray) else np.asarray(cube)
        h, w, bands = cube.shape
        if self.n_endmembers > min(h * w, bands):
            raise ValueError(
                f"n_endmembers={self.n_endmembers} must be between 2 and min(pixels, bands) = {min(h * w, bands)}"
            )
        whole = h * w <= self.sample_size
        if not whole and self.sample_size < self.n_endmembers:
            raise ValueError(f"sample_size={self.sample_size} must be at least n_endmembers={self.n_endmembers}")
        self.history_: dict[str, list[float]] = {}
        start = time.perf_counter()
        if whole:
            Y = cube.astype(np.float64, copy=False).reshape(h * w, bands).T
            E, A = self._fit(Y, h, w)
        else:
            self.endmembers_ = np.asarray(self._fit_large(cube), dtype=np.float64)
            E, A = self.endmembers_, self._transform(cube)
        self.fit_time_ = time.perf_counter() - start
        self.endmembers_ = np.asarray(E, dtype=np.float64)
        self.abundances_ = np.asarray(A, dtype=np.float64).reshape(self.n_endmembers, h, w)
        return self

    def fit_transform(self, cube: np.ndarray, y=None) -> np.ndarray:
        """The abundances of the fit itself (p, H, W), without a second pass over the cube."""
        return self.fit(cube).abundances_

    def _fit(self, Y: np.ndarray, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _fit_large(self, cube: np.ndarray) -> np.ndarray:
        """Endmembers (L, p) of a scene larger than `sample_size`: `_fit_sample` on a seeded
        sample of pixels (`sample_indices_`, row-major). Methods that need the image itself
        (neighbourhoods, crops) override this."""
        rng = np.random.default_rng(self.random_state)
        self.sample_indices_, Y = sample_pixels(cube, self.sample_size, rng)
        return self._fit_sample(Y)

    def _fit_sample(self, Y: np.ndarray) -> np.ndarray:
        """Endmembers (L, p) fitted on sampled pixels Y (L, n), as if they were one image row."""
        return self._fit(Y, Y.shape[1], 1)[0]

    @property
    def neighbourhood_radius(self) -> int:
        """How many rows above and below a pixel its abundances read (0: the pixel alone). A block of
        rows unmixed with this many extra rows on each side matches the whole-scene `transform`."""
        return 0

    def transform(self, cube: np.ndarray) -> np.ndarray:
        """Abundances (p, H, W) of any cube with the fitted bands, in tiles of whole image rows so
        that memory stays bounded (a memory-mapped cube is read one tile at a time)."""
        if not hasattr(self, "endmembers_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(cube) first")
        # No float64 copy of a large cube: tiles are converted one at a time.
        cube = cube if isinstance(cube, np.ndarray) else np.asarray(cube)
        if cube.ndim != 3:
            raise ValueError(f"cube must have shape (H, W, L), got an array of shape {cube.shape}")
        h, w, bands = cube.shape
        if bands != self.endmembers_.shape[0]:
            raise ValueError(f"cube has {bands} bands, the model was fitted on {self.endmembers_.shape[0]}")
        return self._transform(cube).reshape(self.n_endmembers, h, w).astype(np.float64, copy=False)

    def _transform(self, cube: np.ndarray) -> np.ndarray:
        """(p, N) abundances: FCLSU with the fitted endmembers, tile by tile."""
        h, w, bands = cube.shape
        out = np.empty((self.n_endmembers, h * w))
        for start, tile in iter_row_blocks(cube, TILE_PIXELS, np.float64):
            pixels = tile.reshape(-1, bands).T
            out[:, start * w:start * w + pixels.shape[1]] = fcls(pixels, self.endmembers_)
        return out
