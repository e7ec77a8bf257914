"""PNG plots: one per metric family for a run, and method comparisons for a sweep."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedlora.files import atomic_open  # noqa: E402
from fedlora.records import RoundRecord  # noqa: E402

FAMILIES = {
    "accuracy": [("accuracy", "eval accuracy")],
    "loss": [("loss", "eval loss"), ("client_loss", "mean client task loss")],
    "overlap": [("basis_overlap", "basis overlap (paper)"), ("basis_overlap_code", "basis overlap (code)")],
    "cancellation": [("cancellation_ratio", "cancellation (adapters)"),
                     ("cancellation_ratio_delta", "cancellation (round deltas)"),
                     ("pairwise_client_cosine_delta", "pairwise client cosine (deltas)")],
}


# Reference levels drawn on the accuracy and loss plots: what "learning nothing" looks like.
CHANCE = {"accuracy": (0.25, "chance (0.25)"), "loss": (float(np.log(4)), "chance (ln 4)")}


def _reference_lines(ax, key: str, zero_shot: list[float]) -> None:
    """Chance and the zero-shot level (round 0, mean over runs) on an accuracy or loss plot."""
    if key in CHANCE:
        level, label = CHANCE[key]
        ax.axhline(level, color="grey", ls=":", lw=1, label=label)
    if zero_shot:
        ax.axhline(float(np.mean(zero_shot)), color="black", ls="--", lw=1,
                   label=f"zero-shot ({np.mean(zero_shot):.3f})")


def _value(record: RoundRecord, key: str):
    """A record's field, or one of its geometry values."""
    return getattr(record, key) if hasattr(record, key) else record.geometry_value(key)


def _save(fig, path: Path) -> None:
    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_run(metrics: list[RoundRecord], folder: Path, title: str = "") -> list[Path]:
    written = []
    rounds_data = metrics  # round 0 (zero-shot, when evaluated) starts the accuracy and loss lines
    for family, series in FAMILIES.items():
        lines = [(label, [(m.round, _value(m, key)) for m in rounds_data if _value(m, key) is not None])
                 for key, label in series]
        lines = [(label, pts) for label, pts in lines if pts]
        if not lines:  # nothing recorded (a Flower server sees no geometry of personalized models)
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for label, pts in lines:
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
        if family in CHANCE:
            _reference_lines(ax, family, [_value(m, family) for m in metrics
                                          if m.round == 0 and _value(m, family) is not None])
        ax.set_xlabel("round")
        ax.set_title(f"{title} {family}".strip())
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        _save(fig, folder / f"{family}.png")
        written.append(folder / f"{family}.png")
    return written


LINE_STYLES = ["-", "--", ":", "-."]


def plot_comparison(runs: list[tuple[str, list[RoundRecord]]], folder: Path, model: str = "") -> list[Path]:
    """`runs` = (method, metrics) pairs; plots the mean over seeds per method and round."""
    written = []
    for key, label in [("accuracy", "eval accuracy"), ("loss", "eval loss"),
                       ("basis_overlap", "basis overlap (paper)"),
                       ("basis_overlap_code", "basis overlap (code)"),
                       ("cancellation_ratio_delta", "cancellation ratio (round deltas)")]:
        per_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        zero_shot = []
        for method, metrics in runs:
            for m in metrics:
                v = _value(m, key)
                if v is not None:  # round 0 (zero-shot) starts the line and sets the zero-shot level
                    per_method[method][m.round].append(v)
                    if m.round == 0:
                        zero_shot.append(v)
        if not per_method:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for i, (method, by_round) in enumerate(per_method.items()):
            rounds = sorted(by_round)
            mean = np.array([np.mean(by_round[r]) for r in rounds])
            std = np.array([np.std(by_round[r]) for r in rounds])
            # ten colours, then the same colours dashed, dotted...: every method its own line
            color, style = f"C{i % 10}", LINE_STYLES[i // 10 % len(LINE_STYLES)]
            ax.plot(rounds, mean, marker="o", ms=3, color=color, linestyle=style, label=method)
            ax.fill_between(rounds, mean - std, mean + std, color=color, alpha=0.15)
        _reference_lines(ax, key, zero_shot)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.set_title(f"{model}: {label} (mean ± std over seeds)".strip(": "))
        if len(per_method) > 6:  # beside the axes, where it hides no line
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
        else:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        name = f"compare_{key}.png" if not model else f"compare_{_slug(model)}_{key}.png"
        _save(fig, folder / name)
        written.append(folder / name)
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
