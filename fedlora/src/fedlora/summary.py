"""Run summaries, the across-seed table in the reference study's layout, and the paired
zero-shot vs final table."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedlora.files import atomic_write_text
from fedlora.methods import method_label, method_order
from fedlora.records import RoundRecord
from fedlora.rundir import RunDir
from fedlora.stats import accuracy_difference, item_correct, item_losses, loss_difference

# Columns of results.csv (one row per run), in order.
# `method` is the run's label (a name, or a variant such as `subspace:mu=0.5`); the resolved method
# spec follows it (methods.base.Method.spec).
SPEC_COLUMNS = ["server", "trains", "mu", "a_b", "lam", "norm_restore", "clip_tau", "prune_gamma", "prune_lambda"]
RESULT_COLUMNS = [
    "model", "method", *SPEC_COLUMNS, "seed", "best_accuracy", "best_round", "mean_last5_accuracy",
    "final_accuracy", "final_loss", "final_heldout_accuracy", "basis_overlap", "basis_overlap_code",
    "cancellation_ratio_delta", "zero_shot_accuracy", "rounds", "wall_s", "status", "run_dir",
]

TABLE_COLUMNS = [
    ("Best acc", "best_accuracy", 3),
    ("Mean last-5", "mean_last5_accuracy", 3),
    ("Final acc", "final_accuracy", 3),
    ("Final loss", "final_loss", 4),
    ("Basis overlap (paper)", "basis_overlap", 4),
    ("Basis overlap (code)", "basis_overlap_code", 5),
]
# Shown when runs held out client items: every client's own model (personalized for methods that
# keep factors on the client) on its own held-out items, while "Final acc" is the global model's.
HELDOUT_COLUMN = ("Final held-out acc (clients' own models)", "final_heldout_accuracy", 3)


def summarize(metrics: list[RoundRecord]) -> dict:
    """Best/final/mean-last-5 accuracy, final loss and final geometry of one run (RunSummary fields)."""
    evals = [m for m in metrics if m.evaluated and m.round > 0]
    if not evals:
        raise ValueError("no evaluated round to summarise")
    best = max(evals, key=lambda m: m.accuracy)  # first round reaching the best
    last = metrics[-1]
    zero = next((m for m in metrics if m.round == 0), None)
    return {
        "best_accuracy": best.accuracy,
        "best_round": best.round,
        "final_accuracy": evals[-1].accuracy,
        "mean_last5_accuracy": float(np.mean([m.accuracy for m in evals[-5:]])),
        "final_loss": evals[-1].loss,
        "final_heldout_accuracy": evals[-1].heldout_accuracy,
        "basis_overlap": last.geometry_value("basis_overlap"),
        "basis_overlap_code": last.geometry_value("basis_overlap_code"),
        "cancellation_ratio_delta": last.geometry_value("cancellation_ratio_delta"),
        "zero_shot_accuracy": zero.accuracy if zero else None,
        "rounds": last.round,
    }


def write_results_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_results_csv(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _num(value) -> float | None:
    if value is None or value == "":
        return None
    value = float(value)
    return None if math.isnan(value) else value


def mean_std(values: list[float], ddof: int) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=ddof)) if len(arr) > ddof else float("nan")
    return float(arr.mean()), std


def _cell(values: list[float], ddof: int, digits: int) -> str:
    if not values:
        return "n/a"
    mean, std = mean_std(values, ddof)
    if len(values) == 1 or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"



def markdown_table(rows: list[dict], ddof: int = 0) -> str:
    """One table per model: methods as rows, mean ± std over the complete seeds."""
    by_model: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_model[row["model"]][row["method"]].append(row)
    label = "population std, ddof=0" if ddof == 0 else "sample std, ddof=1"
    out = []
    for model, methods in by_model.items():
        columns = TABLE_COLUMNS + [HELDOUT_COLUMN] * any(
            _num(r.get(HELDOUT_COLUMN[1])) is not None for rs in methods.values() for r in rs)
        out.append(f"**{model}** (mean ± {label}; n = complete seeds)\n")
        out.append("| Method | n | " + " | ".join(c[0] for c in columns) + " |")
        out.append("|---|---|" + "---|" * len(columns))
        ranked = sorted(methods.items(), key=lambda kv: method_order(kv[0]))
        for method, runs in ranked:
            done = [r for r in runs if r.get("status", "complete") == "complete"]
            missing = len(runs) - len(done)
            cells = []
            for _, key, digits in columns:
                vals = [v for v in (_num(r.get(key)) for r in done) if v is not None]
                cells.append(_cell(vals, ddof, digits))
            n = f"{len(done)}" + (f" ({missing} unfinished)" if missing else "")
            out.append(f"| {method_label(method)} | {n} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def paired_rows(runs: list[tuple[str, Path]]) -> list[dict]:
    """Per (method, run folder): zero-shot (round 0) vs final round on the same eval items, with
    the paired tests of stats.py. A run without per-item records of both rounds is refused."""
    rows = []
    for method, folder in runs:
        labels, rounds = RunDir(folder).read_eval_items()
        if 0 not in rounds or len(rounds) < 2:
            raise ValueError(f"{folder}: eval_items.npz needs the zero-shot round (eval.zero_shot: true) and "
                             f"a trained round, found rounds {sorted(rounds)}")
        final = max(rounds)
        rows.append({
            "method": method, "n": len(labels), "final_round": final,
            "accuracy": accuracy_difference(item_correct(rounds[0], labels), item_correct(rounds[final], labels)),
            "loss": loss_difference(item_losses(rounds[0], labels), item_losses(rounds[final], labels)),
        })
    return rows


def paired_table(rows: list[dict]) -> str:
    """Markdown: zero-shot and final accuracy and loss per method, final - zero-shot with its 95%
    interval and p-value, and which test gave them."""
    out = ["| Method | items | round | zero-shot acc | final acc | Δ acc [95% CI] | p | "
           "zero-shot loss | final loss | Δ loss [95% CI] | p |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        acc, loss = row["accuracy"], row["loss"]
        out.append(
            f"| {method_label(row['method'])} | {row['n']} | {row['final_round']} "
            f"| {acc.before:.3f} | {acc.after:.3f} | {acc.diff:+.3f} [{acc.low:+.3f}, {acc.high:+.3f}] "
            f"| {acc.p_value:.2g} | {loss.before:.4f} | {loss.after:.4f} "
            f"| {loss.diff:+.4f} [{loss.low:+.4f}, {loss.high:+.4f}] | {loss.p_value:.2g} |")
    if rows:
        out += ["", f"Δ = final - zero-shot on the same items. Accuracy: {rows[0]['accuracy'].test}; "
                f"loss (per-item cross-entropy over the 4 scores): {rows[0]['loss'].test}. "
                "Chance: accuracy 0.25, loss ln 4 = 1.3863."]
    return "\n".join(out) + "\n"
