"""VCA (Nascimento & Dias 2005) endmember extraction followed by FCLSU.

Follows the authors' reference implementation: SNR estimate from the data and its
p-dimensional projection; below the threshold 15 + 10 log10(p) dB a (p-1)-dimensional
projection lifted by a constant coordinate, above it a projective projection onto the
hyperplane through the mean; then p steps that each take the pixel with the largest
projection onto a random direction orthogonal to the endmembers found so far.
"""
from __future__ import annotations

import numpy as np

from hyperunmix.fcls import fcls
from hyperunmix.methods.base import SAMPLE_SIZE, Unmixer


def estimate_snr(Y: np.ndarray, mean: np.ndarray, projected: np.ndarray) -> float:
    """SNR (dB) as in the VCA reference: signal power from the p-dim projection."""
    L, N = Y.shape
    p = projected.shape[0]
    power_y = np.sum(Y**2) / N
    power_x = np.sum(projected**2) / N + mean @ mean
    ratio = (power_x - p / L * power_y) / max(power_y - power_x, 1e-300)
    return float(10 * np.log10(ratio)) if ratio > 0 else -np.inf


def top_directions(M: np.ndarray, d: int) -> np.ndarray:
    """The d leading left singular vectors of M M^T / N."""
    U, _, _ = np.linalg.svd(M @ M.T / M.shape[1], hermitian=True)
    return U[:, :d]


def vca(Y: np.ndarray, p: int, seed: int | None = 0, snr_input: float | None = None):
    """Endmembers E (L, p) and the indices of the chosen pixels. Y is (L, N)."""
    Y = np.asarray(Y, dtype=np.float64)
    L, N = Y.shape
    if not 2 <= p <= min(L, N):
        raise ValueError(f"p={p} must be between 2 and min(L, N) = {min(L, N)}")
    rng = np.random.default_rng(seed)
    mean = Y.mean(axis=1)
    if snr_input is None:
        Ud = top_directions(Y - mean[:, None], p)
        snr = estimate_snr(Y, mean, Ud.T @ (Y - mean[:, None]))
    else:
        snr = snr_input
    snr_threshold = 15 + 10 * np.log10(p)
    if snr < snr_threshold:
        d = p - 1
        Ud = top_directions(Y - mean[:, None], d)
        X = Ud.T @ (Y - mean[:, None])
        projected = Ud @ X + mean[:, None]
        c = np.sqrt(np.max(np.sum(X**2, axis=0)))
        Z = np.vstack([X, c * np.ones((1, N))])
    else:
        Ud = top_directions(Y, p)
        X = Ud.T @ Y
        projected = Ud @ X
        u = X.mean(axis=1)
        Z = X / (u @ X)[None, :]
    indices = np.zeros(p, dtype=int)
    basis = np.zeros((p, p))
    basis[-1, 0] = 1.0
    for i in range(p):
        w = rng.random((p, 1))
        f = w - basis @ np.linalg.pinv(basis) @ w
        f /= np.linalg.norm(f)
        indices[i] = int(np.argmax(np.abs(f.T @ Z)))
        basis[:, i] = Z[:, indices[i]]
    return projected[:, indices], indices


class VCAFCLS(Unmixer):
    """VCA endmembers + FCLSU abundances.

    use_projected: endmembers from the projected data as in the reference implementation
    (True) or the original pixels at the chosen indices (False).
    """

    _parameter_constraints = {**Unmixer._parameter_constraints, "use_projected": ["boolean"]}

    def __init__(self, n_endmembers: int, random_state: int | None = None, use_projected: bool = True,
                 sample_size: int = SAMPLE_SIZE):
        super().__init__(n_endmembers, random_state, sample_size)
        self.use_projected = use_projected

    def _fit(self, Y, H, W):
        E, self.indices_ = vca(Y, self.n_endmembers, seed=self.random_state)
        if not self.use_projected:
            E = Y[:, self.indices_]
        return E, fcls(Y, E)
