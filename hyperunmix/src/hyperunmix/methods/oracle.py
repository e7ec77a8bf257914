"""FCLSU with the ground-truth endmembers: the oracle row of a benchmark."""
from __future__ import annotations

import numpy as np

from hyperunmix.fcls import fcls
from hyperunmix.methods.base import NON_NEGATIVE_INT, SAMPLE_SIZE, Unmixer
from hyperunmix.scene import least_squares_scales


class OracleFCLS(Unmixer):
    """FCLSU abundances for given endmembers E (L, p).

    rescale: some releases store endmembers max-scaled (Samson). With `abundances` (the true
    A, p x N) each column is scaled by least squares so that Y ~ E diag(s) A (the floor quoted
    for Samson); without them the scales are found blindly, alternating FCLSU with the
    least-squares scales (`rescale_iterations` rounds).
    """

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "endmembers": ["array-like", None],
        "rescale": ["boolean"],
        "abundances": ["array-like", None],
        "rescale_iterations": [NON_NEGATIVE_INT],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, endmembers=None,
                 rescale: bool = False, abundances=None, rescale_iterations: int = 20, sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.endmembers = endmembers
        self.rescale = rescale
        self.abundances = abundances
        self.rescale_iterations = rescale_iterations

    def _fit_sample(self, Y):
        return self._fit(Y, Y.shape[1], 1, self.sample_indices_)[0]

    def _fit(self, Y, H, W, pixels=None):
        """`pixels`: the scene pixels Y holds (a sample), to pick the matching true abundances."""
        if self.endmembers is None:
            raise ValueError("OracleFCLS needs endmembers=E_true (L, p)")
        E = np.asarray(self.endmembers, dtype=np.float64)
        if E.shape != (Y.shape[0], self.n_endmembers):
            raise ValueError(f"endmembers must have shape (L={Y.shape[0]}, p={self.n_endmembers}), got {E.shape}")
        if self.rescale and self.abundances is not None:
            A_true = np.asarray(self.abundances, dtype=np.float64).reshape(self.n_endmembers, -1)
            A_true = A_true if pixels is None else A_true[:, pixels]
            E = E * least_squares_scales(Y, E, A_true)[None, :]
            return E, fcls(Y, E)
        A = fcls(Y, E)
        if self.rescale:
            for _ in range(self.rescale_iterations):
                scales = least_squares_scales(Y, E, A)
                if np.any(scales <= 0):
                    break
                E = E * scales[None, :]
                A = fcls(Y, E)
        return E, A
