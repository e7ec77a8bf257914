"""N-FINDR (Winter 1999) on PCA-reduced data, followed by FCLSU.

Endmembers are the p pixels spanning the simplex of largest volume in the (p-1)-dimensional
principal subspace. Starting from seeded random pixels, each vertex in turn is replaced by
the pixel that maximises the volume; sweeps repeat until no vertex changes. The volume with
vertex i replaced by pixel x is linear in [1; x] (cofactor expansion along column i), so
every candidate pixel is scored with one matrix product.
"""
from __future__ import annotations

import numpy as np

from hyperunmix.fcls import fcls
from hyperunmix.methods.base import POSITIVE_INT, SAMPLE_SIZE, Unmixer


def pca_reduce(Y: np.ndarray, d: int) -> np.ndarray:
    """Pixels projected onto the d leading principal components: (d, N)."""
    centred = Y - Y.mean(axis=1, keepdims=True)
    U, _, _ = np.linalg.svd(centred @ centred.T / Y.shape[1], hermitian=True)
    return U[:, :d].T @ centred


def cofactors(M: np.ndarray, column: int) -> np.ndarray:
    """Cofactors of M along one column: det(M with that column = v) = cofactors @ v."""
    n = M.shape[0]
    out = np.empty(n)
    rest = np.delete(M, column, axis=1)
    for row in range(n):
        out[row] = (-1) ** (row + column) * np.linalg.det(np.delete(rest, row, axis=0))
    return out


def max_volume_swaps(augmented: np.ndarray, indices: np.ndarray, max_sweeps: int = 10) -> np.ndarray:
    """N-FINDR's search: each vertex in turn replaced by the candidate column of `augmented`
    (p, N), [1; x] per candidate, that maximises the simplex volume, until a sweep changes none.
    Returns the p chosen column indices, starting from `indices`."""
    indices = np.array(indices)
    for _ in range(max_sweeps):
        changed = False
        for i in range(len(indices)):
            volumes = np.abs(cofactors(augmented[:, indices], i) @ augmented)
            volumes[np.delete(indices, i)] = -1.0  # a vertex twice spans no volume
            best = int(np.argmax(volumes))
            if volumes[best] > volumes[indices[i]] * (1 + 1e-12) and best != indices[i]:
                indices[i] = best
                changed = True
        if not changed:
            break
    return indices


def nfindr(Y: np.ndarray, p: int, seed: int | None = 0, max_sweeps: int = 10):
    """Endmembers E (L, p) (original pixels) and their indices. Y is (L, N)."""
    Y = np.asarray(Y, dtype=np.float64)
    L, N = Y.shape
    if not 2 <= p <= min(L, N):
        raise ValueError(f"p={p} must be between 2 and min(L, N) = {min(L, N)}")
    rng = np.random.default_rng(seed)
    augmented = np.vstack([np.ones((1, N)), pca_reduce(Y, p - 1)])  # (p, N)
    indices = max_volume_swaps(augmented, rng.choice(N, size=p, replace=False), max_sweeps)
    return Y[:, indices], indices


class NFINDRFCLS(Unmixer):
    """N-FINDR endmembers + FCLSU abundances."""

    _parameter_constraints = {**Unmixer._parameter_constraints, "max_sweeps": [POSITIVE_INT]}

    def __init__(self, n_endmembers: int, random_state: int | None = None, max_sweeps: int = 10,
                 sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.max_sweeps = max_sweeps

    def _fit(self, Y, H, W):
        E, self.indices_ = nfindr(Y, self.n_endmembers, seed=self.random_state, max_sweeps=self.max_sweeps)
        return E, fcls(Y, E)
