"""Figures of a run (abundance maps, endmember spectra, training curves) and of a benchmark."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hyperunmix.files import atomic_write  # noqa: E402


def save(fig, path: Path) -> Path:
    """Save atomically as PNG and close the figure."""
    atomic_write(Path(path), lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def material_labels(p: int, names: list[str] | None) -> list[str]:
    return list(names) if names else [f"endmember {k}" for k in range(p)]


def abundance_grid(A_hat: np.ndarray, path: Path, A_true: np.ndarray | None = None,
                   names: list[str] | None = None, title: str = "") -> Path:
    """Estimated (top row) and true (bottom row) abundance maps, (p, H, W), same colour scale."""
    p = A_hat.shape[0]
    rows = 1 if A_true is None else 2
    fig, axes = plt.subplots(rows, p, figsize=(2.6 * p, 2.6 * rows + 0.4), squeeze=False)
    for k, label in enumerate(material_labels(p, names)):
        for row, (maps, kind) in enumerate([(A_hat, "estimated"), (A_true, "true")][:rows]):
            image = axes[row, k].imshow(maps[k], vmin=0, vmax=1, cmap="viridis")
            axes[row, k].set_title(label if A_true is None else f"{label} ({kind})", fontsize=9)
            axes[row, k].axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(title, y=1.04)
    return save(fig, path)


def endmember_plot(E_hat: np.ndarray, path: Path, E_true: np.ndarray | None = None,
                   names: list[str] | None = None, wavelengths: np.ndarray | None = None,
                   sad_deg: list[float] | None = None, title: str = "") -> Path:
    """One panel per endmember: estimated spectrum against the true one."""
    L, p = E_hat.shape
    x = np.arange(L) if wavelengths is None else np.asarray(wavelengths, dtype=float)
    if wavelengths is not None and L > 2 and np.median(np.diff(x)) > 0:
        # Break the lines across dropped bands (gaps wider than twice the usual spacing).
        gaps = np.flatnonzero(np.diff(x) > 2 * np.median(np.diff(x))) + 1
        x = np.insert(x, gaps, np.nan)
        E_hat = np.insert(E_hat, gaps, np.nan, axis=0)
        E_true = None if E_true is None else np.insert(E_true, gaps, np.nan, axis=0)
    fig, axes = plt.subplots(1, p, figsize=(3.2 * p, 2.8), squeeze=False)
    for k, label in enumerate(material_labels(p, names)):
        ax = axes[0, k]
        ax.plot(x, E_hat[:, k], label="estimated")
        if E_true is not None:
            ax.plot(x, E_true[:, k], "--", label="true")
        subtitle = f"{label}" + (f" (SAD {sad_deg[k]:.2f} deg)" if sad_deg else "")
        ax.set_title(subtitle, fontsize=9)
        ax.set_xlabel("band" if wavelengths is None else "wavelength (nm)")
    axes[0, 0].set_ylabel("reflectance")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, y=1.04)
    return save(fig, path)


def training_curves(history: dict[str, list[float]], path: Path, title: str = "") -> Path | None:
    """Every non-empty curve of `history_` on a log scale, one panel each."""
    curves = {name: values for name, values in history.items() if len(values)}
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 2.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(1, len(values) + 1), values)
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
    fig.suptitle(title, y=1.04)
    return save(fig, path)


def estimate_plot(results: dict, path: Path, title: str = "") -> Path:
    """Eigenvalue plot of `estimate.estimate_all`: HySime's data power p_i and twice the noise
    power 2 s_i along the signal eigenvectors (kept where p_i > 2 s_i), and for HFC / NWHFC the
    correlation-minus-covariance eigenvalue gap against its Neyman-Pearson threshold."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        if name == "hysime":
            index = np.arange(1, len(result.data_power) + 1)
            ax.semilogy(index, np.abs(result.data_power), label="data power $p_i$")
            ax.semilogy(index, 2 * np.abs(result.noise_power), label="2 x noise power $2 s_i$")
        else:
            index = np.arange(1, len(result.thresholds) + 1)
            gap = result.correlation_eigenvalues - result.covariance_eigenvalues
            ax.semilogy(index, np.clip(gap, 1e-300, None), label="corr. - cov. eigenvalue")
            ax.semilogy(index, result.thresholds, "--", label=f"threshold (P_F={result.false_alarm:g})")
        ax.axvline(result.n_endmembers + 0.5, color="grey", lw=0.8)
        ax.set_title(f"{name}: {result.n_endmembers}", fontsize=9)
        ax.set_xlabel("eigenvalue index")
        ax.set_xlim(0.5, min(len(index), max(30, 2 * result.n_endmembers + 5)) + 0.5)
        ax.legend(fontsize=7)
    fig.suptitle(title, y=1.04)
    return save(fig, path)


BENCH_BAR_METRICS = [("mean_sad_deg", "mean SAD (deg)"), ("armse", "aRMSE")]
NO_GROUND_TRUTH_METRICS = [("reconstruction_rmse", "reconstruction RMSE")]


def bench_bars(summary: list[dict], path: Path, dataset: str) -> Path:
    """Mean SAD and aRMSE (with std error bars) per method on one dataset; the reconstruction
    RMSE on a scene without ground truth."""
    rows = [r for r in summary if r["dataset"] == dataset]
    methods = [r["method"] for r in rows]
    metrics = [m for m in BENCH_BAR_METRICS if any(f"{m[0]}_mean" in r for r in rows)] or NO_GROUND_TRUTH_METRICS
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6, 0.9 * len(methods) + 3), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        means = [r.get(f"{key}_mean", np.nan) for r in rows]
        stds = [r.get(f"{key}_std", 0.0) for r in rows]
        ax.bar(range(len(methods)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(label)
    fig.suptitle(dataset)
    return save(fig, path)
