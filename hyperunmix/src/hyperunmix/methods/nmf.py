"""Non-negative matrix factorisation (scikit-learn) with abundances renormalised to sum to one."""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import StrOptions

from hyperunmix.methods.base import NON_NEGATIVE_REAL, POSITIVE_INT, SAMPLE_SIZE, UNIT_INTERVAL, Unmixer


def rescale_to_sum_one(W: np.ndarray, Hc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Given X ~ W Hc (W: N x p abundances, Hc: p x L endmembers), pick per-component scales c
    (least squares, W c ~ 1) so that W diag(c) nearly sums to one, move 1/c onto the
    endmembers, then renormalise each pixel exactly."""
    c = np.linalg.lstsq(W, np.ones(W.shape[0]), rcond=None)[0]
    c = np.where(c > 1e-12, c, 1.0 / max(W[:, c <= 1e-12].max(initial=0), 1e-12))
    W = W * c[None, :]
    Hc = Hc / c[:, None]
    totals = W.sum(axis=1, keepdims=True)
    W = np.where(totals > 0, W / np.where(totals > 0, totals, 1.0), 1.0 / W.shape[1])
    return W, Hc


class NMFUnmixer(Unmixer):
    """scikit-learn NMF on the pixels; endmembers rescaled so abundances sum to about one.

    init="random" (seeded) so that seeds give different starts; "nndsvda" is deterministic.
    """

    _parameter_constraints = {
        **Unmixer._parameter_constraints,
        "init": [StrOptions({"random", "nndsvd", "nndsvda", "nndsvdar"})],
        "max_iter": [POSITIVE_INT],
        "tol": [NON_NEGATIVE_REAL],
        "alpha_W": [NON_NEGATIVE_REAL],
        "l1_ratio": [UNIT_INTERVAL],
    }

    def __init__(self, n_endmembers: int, random_state: int | None = None, init: str = "random",
                 max_iter: int = 300, tol: float = 1e-4, alpha_W: float = 0.0, l1_ratio: float = 0.0,
                 sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.alpha_W = alpha_W
        self.l1_ratio = l1_ratio

    def _fit(self, Y, H, W):
        model = NMF(self.n_endmembers, init=self.init, max_iter=self.max_iter, tol=self.tol,
                    random_state=self.random_state, alpha_W=self.alpha_W, l1_ratio=self.l1_ratio)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            abundances = model.fit_transform(Y.T)  # (N, p)
        self.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        self.n_iter_ = int(model.n_iter_)
        self.reconstruction_err_ = float(model.reconstruction_err_)
        abundances, endmembers = rescale_to_sum_one(abundances, model.components_)
        return endmembers.T, abundances.T
