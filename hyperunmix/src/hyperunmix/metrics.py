"""Scores against ground truth: spectral angle, Hungarian matching, abundance RMSE, SRE."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from hyperunmix.blocks import BLOCK_PIXELS, release

MATCHING_METHOD = "hungarian-sad"


def sad(u: np.ndarray, v: np.ndarray) -> float:
    """Spectral angle between two spectra, in radians (scale-invariant)."""
    u = np.asarray(u, dtype=np.float64).ravel()
    v = np.asarray(v, dtype=np.float64).ravel()
    if u.shape != v.shape:
        raise ValueError(f"spectra must have the same length, got {u.size} and {v.size}")
    norm = np.linalg.norm(u) * np.linalg.norm(v)
    if norm == 0:
        raise ValueError("spectral angle is undefined for an all-zero spectrum")
    return float(np.arccos(np.clip(u @ v / norm, -1.0, 1.0)))


def sad_matrix(E_hat: np.ndarray, E_true: np.ndarray) -> np.ndarray:
    """Angles (p_true, p_hat) between every true and every estimated endmember (columns)."""
    a = E_true / np.linalg.norm(E_true, axis=0, keepdims=True).clip(1e-300)
    b = E_hat / np.linalg.norm(E_hat, axis=0, keepdims=True).clip(1e-300)
    return np.arccos(np.clip(a.T @ b, -1.0, 1.0))


def match_endmembers(E_hat: np.ndarray, E_true: np.ndarray) -> np.ndarray:
    """perm such that E_hat[:, perm[k]] matches E_true[:, k] (Hungarian on spectral angle)."""
    E_hat, E_true = np.asarray(E_hat, float), np.asarray(E_true, float)
    if E_hat.shape != E_true.shape:
        raise ValueError(f"E_hat {E_hat.shape} and E_true {E_true.shape} must both be (L, p)")
    rows, cols = linear_sum_assignment(sad_matrix(E_hat, E_true))
    perm = np.empty(E_true.shape[1], dtype=int)
    perm[rows] = cols
    return perm


def as_pixels(A: np.ndarray, name: str) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    if A.ndim == 3:
        return A.reshape(A.shape[0], -1)
    if A.ndim != 2:
        raise ValueError(f"{name} must be (p, N) or (p, H, W), got shape {A.shape}")
    return A


def armse(A_hat: np.ndarray, A_true: np.ndarray) -> float:
    """sqrt(mean((A_hat - A_true)^2)) over all p x N entries."""
    return float(np.sqrt(np.mean((as_pixels(A_hat, "A_hat") - as_pixels(A_true, "A_true")) ** 2)))


def sre_db(X_hat: np.ndarray, X_true: np.ndarray) -> float:
    """Signal-to-reconstruction error 10 log10(||X||^2 / ||X - X_hat||^2) in dB."""
    error = np.sum((X_true - X_hat) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(X_true**2) / error))


def reconstruction_rmse(Y: np.ndarray, E: np.ndarray, A: np.ndarray) -> float:
    """RMSE between pixels Y (L, N) and their reconstruction E A, summed over blocks of pixels so
    that a large (memory-mapped) scene is never reconstructed whole."""
    Y = Y if isinstance(Y, np.ndarray) else np.asarray(Y)
    E, A = np.asarray(E, dtype=np.float64), as_pixels(A, "A")
    squares = 0.0
    for start in range(0, Y.shape[1], BLOCK_PIXELS):
        pixels = np.asarray(Y[:, start:start + BLOCK_PIXELS], dtype=np.float64)
        squares += float(np.sum((pixels - E @ A[:, start:start + BLOCK_PIXELS]) ** 2))
        release(Y)
    return float(np.sqrt(squares / Y.size))


def score(
    E_hat: np.ndarray,
    A_hat: np.ndarray,
    E_true: np.ndarray,
    A_true: np.ndarray,
    Y: np.ndarray | None = None,
) -> dict:
    """All scores after matching estimated to true endmembers (Hungarian on SAD).

    Per-endmember lists are in the true order. A_hat / A_true may be (p, N) or (p, H, W).
    """
    E_hat, E_true = np.asarray(E_hat, float), np.asarray(E_true, float)
    A_hat, A_true = as_pixels(A_hat, "A_hat"), as_pixels(A_true, "A_true")
    if A_hat.shape != A_true.shape:
        raise ValueError(f"A_hat {A_hat.shape} and A_true {A_true.shape} must have the same shape")
    if A_hat.shape[0] != E_hat.shape[1]:
        raise ValueError(f"A_hat has {A_hat.shape[0]} rows but E_hat has {E_hat.shape[1]} endmembers")
    perm = match_endmembers(E_hat, E_true)
    angles = np.diag(sad_matrix(E_hat[:, perm], E_true))
    A_matched = A_hat[perm]
    per_endmember = np.sqrt(np.mean((A_matched - A_true) ** 2, axis=1))
    result = {
        "mean_sad_rad": float(angles.mean()),
        "mean_sad_deg": float(np.degrees(angles).mean()),
        "sad_rad": angles.tolist(),
        "sad_deg": np.degrees(angles).tolist(),
        "armse": armse(A_matched, A_true),
        "armse_x100": 100 * armse(A_matched, A_true),
        "armse_per_endmember": per_endmember.tolist(),
        "sre_db": sre_db(A_matched, A_true),
        "matching": perm.tolist(),
        "matching_method": MATCHING_METHOD,
    }
    if Y is not None:
        result["reconstruction_rmse"] = reconstruction_rmse(Y, E_hat, A_hat)
    return result


def reconstruction_scorer(estimator, cube: np.ndarray, y=None) -> float:
    """A scikit-learn scorer (higher is better): minus the RMSE between `cube` (H, W, L) and its
    reconstruction from the fitted endmembers and `estimator.transform(cube)`. Needs no ground
    truth, so model selection (e.g. `GridSearchCV(..., scoring=reconstruction_scorer)`, whose
    folds are image rows) works on any scene."""
    cube = np.asarray(cube)
    A = estimator.transform(cube).reshape(estimator.n_endmembers, -1)
    return -reconstruction_rmse(cube.reshape(-1, cube.shape[2]).T, estimator.endmembers_, A)
