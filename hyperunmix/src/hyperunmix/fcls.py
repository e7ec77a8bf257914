"""Fully constrained least squares unmixing (FCLSU), exact and batched over all pixels.

For each pixel y: minimise ||y - E a||^2 subject to a >= 0 and sum(a) = 1. With p endmembers
the optimum lies on one of the 2^p - 1 faces of the simplex; on a face S the sum-to-one
least-squares problem has a closed form (one KKT system shared by every pixel), so all pixels
are solved with a few matrix products per face. Among the primal-feasible face solutions the
one with the smallest objective is the exact constrained optimum (every feasible candidate is
a feasible point, and the optimum's own face is among the candidates).
"""
from __future__ import annotations

from itertools import combinations

import numpy as np

MAX_ENUMERATED_P = 12  # 4095 faces; beyond this fall back to the per-pixel active-set solver


def check_system(Y: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Y = np.asarray(Y, dtype=np.float64)
    E = np.asarray(E, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or E.ndim != 2:
        raise ValueError(f"expected Y (L, N) and E (L, p), got shapes {Y.shape} and {E.shape}")
    if Y.shape[0] != E.shape[0]:
        raise ValueError(f"Y has {Y.shape[0]} bands but E has {E.shape[0]} rows; expected E (L={Y.shape[0]}, p)")
    if not (np.all(np.isfinite(Y)) and np.all(np.isfinite(E))):
        raise ValueError("Y and E must be finite (found NaN or inf)")
    return Y, E


def face_solution(G: np.ndarray, B: np.ndarray, face: tuple[int, ...]) -> np.ndarray:
    """Sum-to-one least squares restricted to `face`, for all pixels: (|S|, N)."""
    k = len(face)
    kkt = np.ones((k + 1, k + 1))
    kkt[:k, :k] = G[np.ix_(face, face)]
    kkt[k, k] = 0.0
    # pinv copes with collinear endmembers (a singular face gives its minimum-norm solution).
    inverse = np.linalg.pinv(kkt)
    return inverse[:k, :k] @ B[list(face)] + inverse[:k, k:k + 1]


def fcls(Y: np.ndarray, E: np.ndarray, chunk_size: int = 65536, tol: float = 1e-10) -> np.ndarray:
    """Exact FCLSU abundances A (p, N) for pixels Y (L, N) and endmembers E (L, p)."""
    Y, E = check_system(Y, E)
    p = E.shape[1]
    if p > MAX_ENUMERATED_P:
        return fcls_per_pixel(Y, E)
    G = E.T @ E
    faces = [face for size in range(1, p + 1) for face in combinations(range(p), size)]
    out = np.empty((p, Y.shape[1]))
    for start in range(0, Y.shape[1], chunk_size):
        out[:, start:start + chunk_size] = solve_chunk(G, E.T @ Y[:, start:start + chunk_size], faces, tol)
    return out


# Two faces whose objectives differ by less than this share of the objective's terms are tied:
# the rounding error of E.T @ Y and of the face solves is about L * eps ~ 1e-14 of those terms,
# and which BLAS kernel runs decides the last bits. 1e-10 leaves four orders of margin above
# rounding and is still far below any difference that means a better fit.
TIE_RTOL = 1e-10


def solve_chunk(G: np.ndarray, B: np.ndarray, faces: list[tuple[int, ...]], tol: float) -> np.ndarray:
    p, n = B.shape
    best = np.full(n, np.inf)
    best_size = np.zeros(n, dtype=int)
    A = np.zeros((p, n))
    for face in faces:
        a = face_solution(G, B, face)
        feasible = np.all(a >= -tol, axis=0)
        if not feasible.any():
            continue
        a = np.clip(a, 0.0, None)
        Gs = G[np.ix_(face, face)]
        # Objective without the constant ||y||^2 / 2.
        quadratic = 0.5 * np.einsum("in,in->n", a, Gs @ a)
        linear = np.einsum("in,in->n", B[list(face)], a)
        objective = quadratic - linear
        tie = TIE_RTOL * (np.abs(quadratic) + np.abs(linear))
        # At a tie the larger face wins. A feasible face is the least-squares optimum over its
        # own affine hull, so it is never worse than any face it contains: a tie between nested
        # faces means the smaller one merely drops coordinates that are tiny (a true abundance
        # of 1e-8, say). Letting rounding decide would flip such pixels from kernel to kernel.
        better = feasible & ((objective < best - tie) | ((objective <= best + tie) & (len(face) > best_size)))
        if better.any():
            best[better] = objective[better]
            best_size[better] = len(face)
            A[:, better] = 0.0
            A[np.array(face)[:, None], np.flatnonzero(better)[None, :]] = a[:, better]
    return A / A.sum(axis=0, keepdims=True)


def fcls_per_pixel(Y: np.ndarray, E: np.ndarray, delta: float | None = None) -> np.ndarray:
    """Reference FCLSU: scipy NNLS per pixel on the sum-to-one augmented system.

    Appending a row delta * 1^T to E (and delta to y) enforces sum-to-one up to O(1/delta^2).
    Slow (a Python loop over pixels); used for p > 12, tests and benchmarks.
    """
    from scipy.optimize import nnls

    Y, E = check_system(Y, E)
    delta = 1e5 * max(1.0, float(np.abs(E).max())) if delta is None else delta
    E_aug = np.vstack([E, delta * np.ones((1, E.shape[1]))])
    A = np.empty((E.shape[1], Y.shape[1]))
    for n in range(Y.shape[1]):
        A[:, n] = nnls(E_aug, np.append(Y[:, n], delta), maxiter=50 * E.shape[1])[0]
    return A
