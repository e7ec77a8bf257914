"""Synthetic scenes with known truth: library spectra, spatially smooth simplex abundances,
optional bilinear (Fan) mixing, white noise at a chosen SNR."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from hyperunmix.scene import Scene

PROCEDURAL_BANDS = 120
MIN_LIBRARY_ANGLE_DEG = 8.0  # procedural spectra closer than this are redrawn


def procedural_library(p: int, n_bands: int, rng: np.random.Generator) -> np.ndarray:
    """p smooth, distinct reflectance-like spectra (L, p): a few Gaussian bumps on a slope."""
    grid = np.linspace(0.0, 1.0, n_bands)
    E = np.empty((n_bands, p))
    k = 0
    while k < p:
        spectrum = rng.uniform(0.05, 0.3) + rng.uniform(-0.2, 0.3) * grid
        for _ in range(rng.integers(2, 5)):
            spectrum += rng.uniform(-0.3, 0.5) * np.exp(-0.5 * ((grid - rng.uniform()) / rng.uniform(0.04, 0.2)) ** 2)
        spectrum = np.clip(spectrum, 0.02, None)
        spectrum = 0.05 + 0.85 * spectrum / spectrum.max()
        unit = spectrum / np.linalg.norm(spectrum)
        cosines = np.clip(E[:, :k].T @ unit / np.linalg.norm(E[:, :k], axis=0), -1, 1) if k else None
        if k and np.degrees(np.arccos(cosines)).min() < MIN_LIBRARY_ANGLE_DEG:
            continue
        E[:, k] = spectrum
        k += 1
    return E


def real_library(p: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Jasper Ridge GT spectra (198 bands), then Samson's least-squares-rescaled GT resampled to 198."""
    from hyperunmix.datasets import load_dataset

    jasper = load_dataset("jasper-ridge")
    spectra, names = [jasper.E], list(jasper.material_names)
    if p > jasper.p:
        samson = load_dataset("samson")
        E = samson.rescaled_endmembers()
        grid = np.linspace(0, 1, jasper.n_bands)
        spectra.append(np.stack([np.interp(grid, np.linspace(0, 1, E.shape[0]), e) for e in E.T], axis=1))
        names += [f"samson-{n}" for n in samson.material_names]
    library = np.hstack(spectra)
    if p > library.shape[1]:
        raise ValueError(f"the real library has {library.shape[1]} spectra, p={p} requested")
    chosen = np.sort(rng.choice(library.shape[1], size=p, replace=False))
    return library[:, chosen], [names[i] for i in chosen]


def smooth_abundances(H: int, W: int, p: int, purity: float, rng: np.random.Generator,
                      smoothness: float, sharpness: float) -> np.ndarray:
    """(p, N) abundances: smoothed Gaussian fields -> softmax; the `purity` share made pure.

    Each endmember gets purity * N / p pure pixels (its most dominant ones), so pure regions
    are spatially coherent and every material has pure pixels when purity > 0.
    """
    fields = np.stack([gaussian_filter(rng.standard_normal((H, W)), smoothness, mode="wrap") for _ in range(p)])
    fields /= fields.std(axis=(1, 2), keepdims=True)
    logits = sharpness * fields.reshape(p, -1)
    A = np.exp(logits - logits.max(axis=0))
    A /= A.sum(axis=0)
    n_pure = int(round(purity * H * W / p))
    if n_pure:
        order = np.argsort(-A, axis=1)  # most abundant pixels first, per material
        taken = np.zeros(H * W, dtype=bool)
        for k in range(p):
            candidates = order[k][~taken[order[k]]][:n_pure]
            A[:, candidates] = 0.0
            A[k, candidates] = 1.0
            taken[candidates] = True
    return A


def make_synthetic(
    H: int = 64,
    W: int = 80,
    library: str = "procedural",
    p: int = 4,
    purity: float = 0.05,
    bilinear: bool = False,
    snr_db: float | None = 30.0,
    seed: int = 0,
    n_bands: int = PROCEDURAL_BANDS,
    smoothness: float = 4.0,
    sharpness: float = 2.5,
    gamma: float = 1.0,
) -> Scene:
    """A scene Y = E A (+ bilinear terms) + noise with its truth (E, A).

    library: "procedural" (smooth random spectra, `n_bands` bands) or "real" (Jasper Ridge and
    Samson ground-truth spectra). bilinear: Fan model, Y += gamma * sum_{i<j} a_i a_j (e_i * e_j).
    snr_db: white Gaussian noise with 10 log10(mean signal power / noise power) = snr_db.
    """
    if library not in ("procedural", "real"):
        raise ValueError(f"library must be 'procedural' or 'real', got {library!r}")
    if not 0.0 <= purity < 1.0:
        raise ValueError(f"purity must be in [0, 1), got {purity}")
    rng = np.random.default_rng(seed)
    if library == "real":
        E, names = real_library(p, rng)
    else:
        E, names = procedural_library(p, n_bands, rng), [f"material-{k}" for k in range(p)]
    A = smooth_abundances(H, W, p, purity, rng, smoothness, sharpness)
    Y = E @ A
    if bilinear:
        for i in range(p):
            for j in range(i + 1, p):
                Y += gamma * np.outer(E[:, i] * E[:, j], A[i] * A[j])
    if snr_db is not None:
        noise_power = np.mean(Y**2) / 10 ** (snr_db / 10)
        Y = Y + rng.normal(0.0, np.sqrt(noise_power), Y.shape)
    # Noise may push dark bands slightly below zero; reflectance cannot be negative.
    Y = np.clip(Y, 0.0, None)
    return Scene(
        Y=Y, H=H, W=W, E=E, A=A, material_names=names, name=f"synthetic-{library}",
        wavelengths=np.linspace(400.0, 2500.0, E.shape[0]),
        meta={"library": library, "purity": purity, "bilinear": bilinear, "snr_db": snr_db, "seed": seed},
    )
