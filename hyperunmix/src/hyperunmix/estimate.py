"""How many materials: the signal-subspace dimension of a scene.

- HySime (Bioucas-Dias & Nascimento, "Hyperspectral subspace identification", IEEE TGRS 46(8),
  2008): the noise of each band is what a least-squares regression on all the other bands does
  not explain; the signal correlation matrix is that of the data minus this noise; along each
  eigenvector e_i of it the data power is p_i = e_i' R_y e_i and the noise power
  s_i = e_i' R_n e_i, and keeping e_i lowers the mean squared error of the projected signal
  exactly when -p_i + 2 s_i < 0, so the subspace minimising the error keeps those eigenvectors.
  Additive noise, uncorrelated between bands (the authors' reference code keeps the diagonal
  of the noise correlation, as here).
- HFC and NWHFC, virtual dimensionality (Chang & Du, "Estimation of number of spectrally
  distinct signal sources in hyperspectral imagery", IEEE TGRS 42(3), 2004): a signal source
  makes the l-th eigenvalue of the sample correlation matrix exceed the l-th eigenvalue of the
  covariance matrix; with Var[eigenvalue] ~ 2 eigenvalue^2 / N for both, a Neyman-Pearson test
  at false-alarm probability P_F counts the components whose difference exceeds its threshold.
  NWHFC runs HFC on the data whitened by the HySime noise estimate. Default P_F = 1e-3.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

DEFAULT_FALSE_ALARM = 1e-3
# The reference implementation's regulariser of the band Gram matrix (absolute, as there): it
# only keeps the inverse finite for bands that are exact linear combinations of others.
GRAM_REGULARISER = 1e-6


@dataclass
class HySimeResult:
    n_endmembers: int
    eigenvalues: np.ndarray  # (L,) of the signal correlation matrix, descending
    data_power: np.ndarray  # (L,) p_i along each eigenvector, same order
    noise_power: np.ndarray  # (L,) s_i along each eigenvector, same order
    subspace: np.ndarray  # (L, k) the kept eigenvectors, by increasing cost -p_i + 2 s_i


@dataclass
class VirtualDimensionResult:
    n_endmembers: int
    correlation_eigenvalues: np.ndarray  # (L,) descending
    covariance_eigenvalues: np.ndarray  # (L,) descending
    thresholds: np.ndarray  # (L,) Neyman-Pearson threshold on their difference
    false_alarm: float


def as_pixels(Y: np.ndarray) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] < 2 or Y.shape[1] <= Y.shape[0]:
        raise ValueError(f"Y must be (bands, pixels) with more pixels than bands, got shape {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise ValueError("Y contains NaN or infinite values")
    return Y


def estimate_noise(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band multiple-regression noise estimate: noise (L, N) and its correlation, diagonal (L, L).

    The paper regresses band i on all other bands, beta_i = (Z_i' Z_i)^-1 Z_i' z_i; with
    P = (Y Y' + eps I)^-1 the residual of that regression is row i of P Y divided by P_ii (block
    inversion), so one inverse serves every band, as the paper's eq. (11) intends.
    """
    Y = as_pixels(Y)
    P = np.linalg.inv(Y @ Y.T + GRAM_REGULARISER * np.eye(Y.shape[0]))
    noise = (P @ Y) / np.diag(P)[:, None]
    return noise, np.diag(np.einsum("ln,ln->l", noise, noise) / Y.shape[1])


def hysime(Y: np.ndarray) -> HySimeResult:
    """HySime signal-subspace estimate of pixels Y (L, N)."""
    Y = as_pixels(Y)
    L, N = Y.shape
    noise, Rn = estimate_noise(Y)
    X = Y - noise
    Ry, Rx = Y @ Y.T / N, X @ X.T / N
    eigenvalues, E = np.linalg.eigh(Rx)
    eigenvalues, E = eigenvalues[::-1], E[:, ::-1]
    # As the reference code: a tiny ridge (1e-5 of the mean signal power) on the noise correlation.
    Rn = Rn + np.trace(Rx) / L / 1e5 * np.eye(L)
    data_power = np.einsum("li,lm,mi->i", E, Ry, E)
    noise_power = np.einsum("li,lm,mi->i", E, Rn, E)
    cost = -data_power + 2 * noise_power
    kept = np.flatnonzero(cost < 0)
    return HySimeResult(int(kept.size), eigenvalues, data_power, noise_power, E[:, kept[np.argsort(cost[kept])]])


def descending_eigenvalues(M: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(M)[::-1]


def hfc(Y: np.ndarray, false_alarm: float = DEFAULT_FALSE_ALARM) -> VirtualDimensionResult:
    """Harsanyi-Farrand-Chang virtual dimensionality of pixels Y (L, N)."""
    Y = as_pixels(Y)
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm}")
    N = Y.shape[1]
    centred = Y - Y.mean(axis=1, keepdims=True)
    corr = descending_eigenvalues(Y @ Y.T / N)
    cov = descending_eigenvalues(centred @ centred.T / N)
    sigma = np.sqrt(2.0 * (corr**2 + cov**2) / N)
    thresholds = sigma * norm.isf(false_alarm)
    n = int(np.sum(corr - cov > thresholds))
    return VirtualDimensionResult(n, corr, cov, thresholds, false_alarm)


def nwhfc(Y: np.ndarray, false_alarm: float = DEFAULT_FALSE_ALARM) -> VirtualDimensionResult:
    """Noise-whitened HFC: HFC on the bands divided by their estimated noise standard deviation."""
    Y = as_pixels(Y)
    _, Rn = estimate_noise(Y)
    sigma = np.sqrt(np.diag(Rn))
    if np.any(sigma <= 0):
        raise ValueError(f"band(s) {np.flatnonzero(sigma <= 0).tolist()} have no estimated noise: "
                         "they are exact combinations of other bands; drop them before NWHFC")
    return hfc(Y / sigma[:, None], false_alarm)


def estimate_all(Y: np.ndarray, false_alarm: float = DEFAULT_FALSE_ALARM) -> dict:
    """{'hysime': HySimeResult, 'hfc': ..., 'nwhfc': ...} for pixels Y (L, N)."""
    return {"hysime": hysime(Y), "hfc": hfc(Y, false_alarm), "nwhfc": nwhfc(Y, false_alarm)}
