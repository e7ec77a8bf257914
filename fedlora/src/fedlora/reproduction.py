"""The reproduction report: sweep folders -> one markdown page with tables, plots and provenance.

    python -m fedlora.reproduction --sweeps sweeps/cpu-minilm [...] [--grid DIR] --out docs/results/fedlora.md

Every number is read from the run folders (summary.json, metrics.jsonl, config.yaml); runs that
did not finish are shown as such, never dropped. The paragraphs that interpret the results are
written by hand in the README.md beside the page, which rendering never touches.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import yaml

from fedlora.files import atomic_write_text
from fedlora.methods import METHODS, method_label, method_order, variant_label
from fedlora.plots import _slug, plot_comparison
from fedlora.rundir import RunDir
from fedlora.stats import (
    PairedDifference,
    accuracy_difference,
    item_correct,
    item_losses,
    loss_difference,
    seed_averaged_difference,
)
from fedlora.summary import TABLE_COLUMNS, _cell, _num

INTERPRETATION = ("What these numbers say, with their uncertainty, is written by hand in [README.md](README.md) "
                  "beside this page; rendering never touches it.")

# Reference study, from the specification (RoBERTa-large: 3 seeds, mean; SmolLM-360M: as reported).
REFERENCE = {
    "RoBERTa-large": {
        "fedavg": {"best_accuracy": .334, "mean_last5_accuracy": .322, "final_accuracy": .332,
                   "final_loss": 1.3825, "overlap": .9582},
        "svd": {"best_accuracy": .315, "mean_last5_accuracy": .305, "final_accuracy": .314,
                "final_loss": 1.3836, "overlap": .9912},
        "fedsvd": {"best_accuracy": .336, "mean_last5_accuracy": .321, "final_accuracy": .336,
                   "final_loss": 1.3823, "overlap": .9578},
        "subspace": {"best_accuracy": .454, "mean_last5_accuracy": .425, "final_accuracy": .429,
                     "final_loss": 1.3630, "overlap": .99998},
    },
    "SmolLM-360M": {
        "fedavg": {"best_accuracy": .581, "final_loss": 1.1078, "overlap": .9777},
        "svd": {"best_accuracy": .536, "final_loss": 1.1708, "overlap": .9906},
        "fedsvd": {"best_accuracy": .521, "final_loss": 1.1848, "overlap": .9680},
        "subspace": {"best_accuracy": .565, "final_loss": 1.1254, "overlap": .99989},
    },
}
# The reference's across-seed std (ddof=0) where it gives one.
REFERENCE_STD = {"RoBERTa-large": {
    "fedavg": {"best_accuracy": .020, "final_accuracy": .019},
    "svd": {"best_accuracy": .007, "final_accuracy": .007},
    "fedsvd": {"best_accuracy": .021, "final_accuracy": .021},
    "subspace": {"best_accuracy": .023, "final_accuracy": .011},
}}
# (label, our summary key, reference key) compared for the direction of each finding.
DIRECTION_METRICS = [
    ("Best acc", "best_accuracy", "best_accuracy"),
    ("Mean last-5", "mean_last5_accuracy", "mean_last5_accuracy"),
    ("Final acc", "final_accuracy", "final_accuracy"),
    ("Final loss", "final_loss", "final_loss"),
    ("Basis overlap (paper) vs reference overlap", "basis_overlap", "overlap"),
    ("Basis overlap (code) vs reference overlap", "basis_overlap_code", "overlap"),
]
# Attribution ablation: (label, minuend method, subtrahend method).
ATTRIBUTION = [
    ("Subspace-Reg − FedAvg (both parts)", "subspace", "fedavg"),
    ("server rule alone: subspace-server-only − FedAvg", "subspace-server-only", "fedavg"),
    ("client penalty alone: fedavg-penalty − FedAvg", "fedavg-penalty", "fedavg"),
    ("penalty on top of the server rule: Subspace-Reg − subspace-server-only", "subspace",
     "subspace-server-only"),
]
ATTRIBUTION_METRICS = [("Best acc", "best_accuracy", 3), ("Final acc", "final_accuracy", 3),
                       ("Final loss", "final_loss", 4), ("Basis overlap (paper)", "basis_overlap", 4),
                       ("Basis overlap (code)", "basis_overlap_code", 5)]
PLOT_KEYS = [("accuracy", "accuracy per round"), ("basis_overlap", "basis overlap (paper) per round"),
             ("basis_overlap_code", "basis overlap (code) per round"), ("loss", "eval loss per round"),
             ("cancellation_ratio_delta", "cancellation ratio of the round's updates per round")]


# -- collecting -------------------------------------------------------------------------------
def collect_runs(sweep_dir: str | Path) -> list[dict]:
    """One record per run folder (config.yaml) under `sweep_dir`, finished or not."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    runs = []
    for config in sorted(sweep_dir.rglob("config.yaml")):
        run = RunDir(config.parent)
        cfg = run.load_config()
        metrics = run.read_metrics()
        done = max((m.round for m in metrics if m.round > 0), default=0)
        record = {"model": cfg.model.name, "method": variant_label(cfg.method), "seed": cfg.seed, "config": cfg,
                  "run_dir": config.parent.relative_to(sweep_dir).as_posix(), "path": config.parent.as_posix(),
                  "status": run.status, "rounds_done": done, "rounds_planned": cfg.rounds, "metrics": metrics,
                  "summary": None, "items": (None, {})}
        if run.is_complete:
            record["summary"] = run.read_summary()
            record["items"] = run.read_eval_items()
        runs.append(record)
    if not runs:
        raise FileNotFoundError(f"no run folders (config.yaml) under {sweep_dir}")
    return runs


def unfinished_label(run: dict) -> str:
    failed = ", failed" if run["status"] == "failed" else ""
    return f"unfinished (round {run['rounds_done']}/{run['rounds_planned']}{failed})"


def _value(run: dict, key: str) -> float | None:
    return None if run["summary"] is None else _num(getattr(run["summary"], key, None))


def _by_model_method(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["model"]][run["method"]].append(run)
    return {model: {m: sorted(methods[m], key=lambda r: r["seed"]) for m in sorted(methods, key=method_order)}
            for model, methods in grouped.items()}


# -- tables -----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _count(runs: list[dict]) -> str:
    """"k of n" complete runs, then each unfinished seed and how far it got."""
    done = sum(r["summary"] is not None for r in runs)
    return f"{done} of {len(runs)}" + "".join(f"; seed {r['seed']} {unfinished_label(r)}"
                                             for r in runs if r["summary"] is None)


def results_table(methods: dict[str, list[dict]], ddof: int) -> list[str]:
    """Methods as rows, mean ± std over complete seeds; a method without one shows why."""
    rows = []
    for method, runs in methods.items():
        done = [r for r in runs if r["summary"] is not None]
        open_runs = [r for r in runs if r["summary"] is None]
        n = _count(runs)
        if done:
            cells = [_cell([v for v in (_value(r, key) for r in done) if v is not None], ddof, digits)
                     for _, key, digits in TABLE_COLUMNS]
        else:
            cells = ["; ".join(unfinished_label(r) for r in open_runs)] * len(TABLE_COLUMNS)
        rows.append([method_label(method), n, *cells])
    return _table(["Method", "n", *(c[0] for c in TABLE_COLUMNS)], rows)


def per_run_table(methods: dict[str, list[dict]]) -> list[str]:
    with_zero = any(_value(r, "zero_shot_accuracy") is not None for rs in methods.values() for r in rs)
    columns = list(TABLE_COLUMNS) + ([("Zero-shot acc", "zero_shot_accuracy", 3)] if with_zero else [])
    rows = []
    for method, runs in methods.items():
        for run in runs:
            if run["summary"] is None:
                cells = [unfinished_label(run)] * (len(columns) + 2)
            else:
                wall = _value(run, "wall_s")
                cells = [_fmt(_value(run, key), digits) for _, key, digits in columns]
                cells += [str(run["summary"].best_round), _fmt(wall, 1)]
            rows.append([method_label(method), str(run["seed"]), run["status"], *cells])
    header = ["Method", "Seed", "Status", *(c[0] for c in columns), "Best round", "Wall (s)"]
    return _table(header, rows)


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def zero_shot_lines(methods: dict[str, list[dict]]) -> list[str]:
    values = [v for rs in methods.values() for r in rs if (v := _value(r, "zero_shot_accuracy")) is not None]
    if not values:
        return ["Zero-shot accuracy: not recorded in these runs (`eval.zero_shot: false`).", ""]
    return [f"Zero-shot accuracy (base model before round 1, over the {len(values)} runs that recorded it): "
            f"{_cell(values, 0, 3)} (mean ± population std, ddof=0).", ""]


# Geometry of the last round's client adapters (metrics.jsonl `geometry`): why the methods differ.
GEOMETRY_COLUMNS = [("Mean principal angle (deg)", "principal_angle_mean_deg", 2),
                    ("Max principal angle (deg)", "principal_angle_max_deg", 2),
                    ("Cancellation ratio (adapters)", "cancellation_ratio", 4),
                    ("Cancellation ratio (round updates)", "cancellation_ratio_delta", 4),
                    ("Pairwise client cosine (round updates)", "pairwise_client_cosine_delta", 4)]


def last_geometry(run: dict) -> dict:
    rounds = [m for m in run["metrics"] if m.round > 0 and m.geometry]
    return rounds[-1].geometry if rounds else {}


def geometry_table(methods: dict[str, list[dict]]) -> list[str]:
    rows = []
    for method, runs in methods.items():
        done = [r for r in runs if r["summary"] is not None]
        cells = [_cell([v for r in done if (v := _num(last_geometry(r).get(key))) is not None], 0, digits)
                 for _, key, digits in GEOMETRY_COLUMNS]
        rows.append([method_label(method), f"{len(done)} of {len(runs)}", *cells])
    lines = ["Client subspaces in the final round, mean ± population std (ddof=0) over complete seeds. "
             "Cancellation ratio = ||Σ p_k ΔW_k|| / Σ p_k ||ΔW_k|| (1: the clients' updates add up, "
             "lower: they cancel).", ""]
    return lines + _table(["Method", "n", *(c[0] for c in GEOMETRY_COLUMNS)], rows)


# The clients' own models on their held-out items (federation.client_holdout) and the bytes the
# clients' updates and the server's broadcasts hold per round: what personalized and
# communication-saving methods are for.
CLIENT_COLUMNS = [("Final held-out acc (clients' own models)", "heldout_accuracy", 3),
                  ("Final held-out loss", "heldout_loss", 4),
                  ("Up per round (MB)", "bytes_up", 3), ("Down per round (MB)", "bytes_down", 3)]


def client_values(run: dict) -> dict[str, float]:
    """Held-out scores of the last evaluated round and the mean bytes up and down per round (MB);
    only the keys the run's metrics carry."""
    rounds = [m for m in run["metrics"] if m.round > 0]
    scored = [m for m in rounds if m.heldout_accuracy is not None]
    values = {}
    if scored:
        values["heldout_accuracy"], values["heldout_loss"] = scored[-1].heldout_accuracy, scored[-1].heldout_loss
    for key in ("bytes_up", "bytes_down"):
        sent = [getattr(m, key) for m in rounds if getattr(m, key) is not None]
        if sent:
            values[key] = float(np.mean(sent)) / 1e6
    return values


def client_table(methods: dict[str, list[dict]]) -> list[str]:
    note = ("Held-out: every client's own model scored on items of its own partition held out of training "
            "(`federation.client_holdout`), mean over clients, in the last evaluated round. A client's own "
            "model is the global for every method but FedSA-LoRA, whose clients keep their own B (its "
            "\"Final acc\" above is an evaluation-only global, A_g with the clients' mean B). Up: the factors "
            "and head the round's clients send (at their own rank); down: the global sent to them; MB = 10^6 "
            "bytes per round, all sampled clients together. Mean ± population std (ddof=0) over complete "
            "seeds; n/a where the runs did not record it.")
    return run_values_table(methods, CLIENT_COLUMNS, client_values, note)


def run_values_table(methods: dict[str, list[dict]], columns: list[tuple[str, str, int]], values_of,
                     note: str) -> list[str]:
    """Methods as rows: `values_of(run)` (a dict of the columns' keys it has) of every complete
    run, mean ± population std per column; n/a where no run has the key."""
    rows = []
    for method, runs in methods.items():
        per_run = [values_of(r) for r in runs if r["summary"] is not None]
        cells = [_cell([v[key] for v in per_run if key in v], 0, digits) for _, key, digits in columns]
        rows.append([method_label(method), _count(runs), *cells])
    return [note, ""] + _table(["Method", "n", *(c[0] for c in columns)], rows)


# -- direction of findings vs the reference ---------------------------------------------------
def reference_name(model: str) -> str:
    return "SmolLM-360M" if "smollm" in model.lower() else "RoBERTa-large"


def _mean(runs: list[dict], key: str) -> float | None:
    values = [v for r in runs if (v := _value(r, key)) is not None]
    return float(np.mean(values)) if values else None


def _ranking(values: dict[str, float]) -> str:
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    return " > ".join(method_label(m) for m, _ in ordered)


def direction_table(methods: dict[str, list[dict]], model: str) -> list[str]:
    """Per metric and method pair: does our ordering of the means match the reference's?"""
    reference = REFERENCE[reference_name(model)]
    pairs = list(combinations(list(reference), 2))
    rows = []
    for name, key, ref_key in DIRECTION_METRICS:
        ref = {m: v[ref_key] for m, v in reference.items() if ref_key in v}
        if not ref:
            continue
        ours = {m: _mean(methods.get(m, []), key) for m in ref}
        ranked = {m: v for m, v in ours.items() if v is not None}
        rows.append([name, "ranking", _ranking(ref), _ranking(ranked) if ranked else "n/a", "—", "—"])
        for a, b in pairs:
            hi, lo = (a, b) if ref[a] >= ref[b] else (b, a)
            claim = f"{method_label(hi)} > {method_label(lo)} ({ref[hi]:g} vs {ref[lo]:g})"
            diffs = paired_differences(methods, hi, lo, key)
            agree = f"{sum(d > 0 for d in diffs)} of {len(diffs)}" if diffs else "—"
            rows.append([name, f"{method_label(hi)} vs {method_label(lo)}", claim,
                         *_our_direction(methods, ours, hi, lo, key), agree])
    header = ["Metric", "Comparison", f"Reference ({reference_name(model)})", "This reproduction", "Verdict",
              "Seeds in the reference's direction"]
    return _table(header, rows)


def _our_direction(methods: dict[str, list[dict]], ours: dict, hi: str, lo: str, key: str) -> list[str]:
    missing = [m for m in (hi, lo) if ours[m] is None]
    if missing:
        why = "; ".join(f"{method_label(m)}: " + (", ".join(unfinished_label(r) for r in methods.get(m, []))
                                          or "not run") for m in missing)
        return [why, "unfinished"]
    digits = next((d for _, k, d in TABLE_COLUMNS if k == key), 4)
    a, b = round(ours[hi], digits), round(ours[lo], digits)  # equal at the table's precision: a tie
    sign = ">" if a > b else "<" if a < b else "="
    text = f"{method_label(hi)} {sign} {method_label(lo)} ({a:.{digits}f} vs {b:.{digits}f})"
    return [text, "reproduces" if a > b else "does not reproduce" if a < b else "tie"]


# -- attribution ablation ---------------------------------------------------------------------
def paired_differences(methods: dict[str, list[dict]], first: str, second: str, key: str) -> list[float]:
    """first − second over the seeds complete in both, in seed order."""
    a = {r["seed"]: v for r in methods.get(first, []) if (v := _value(r, key)) is not None}
    b = {r["seed"]: v for r in methods.get(second, []) if (v := _value(r, key)) is not None}
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def attribution_table(methods: dict[str, list[dict]]) -> list[str]:
    needed = {m for _, x, y in ATTRIBUTION for m in (x, y)}
    if not needed & (set(methods) - {"fedavg", "subspace"}):
        return ["The attribution methods (`subspace-server-only`, `fedavg-penalty`) were not run in this sweep.", ""]
    rows = []
    for name, first, second in ATTRIBUTION:
        cells = []
        for _, key, digits in ATTRIBUTION_METRICS:
            diffs = paired_differences(methods, first, second, key)
            cells.append(_difference_cell(diffs, digits, methods, (first, second)))
        rows.append([name, *cells])
    lines = ["Difference of means over the seeds complete in both methods (= mean of the per-seed paired "
             "differences) ± the sample std (ddof=1) of those paired differences; n = paired seeds.", ""]
    return lines + _table(["Contrast", *(m[0] for m in ATTRIBUTION_METRICS)], rows)


def _difference_cell(diffs: list[float], digits: int, methods: dict, pair: tuple[str, str]) -> str:
    if not diffs:
        parts = []
        for m in pair:
            open_runs = [r for r in methods.get(m, []) if r["summary"] is None]
            if m not in methods:
                parts.append(f"{m} not run")
            elif open_runs:
                parts.append(f"{m} " + ", ".join(unfinished_label(r) for r in open_runs))
        return "; ".join(parts) or "n/a"
    mean = float(np.mean(diffs))
    if len(diffs) < 2:
        return f"{mean:+.{digits}f} (n=1)"
    return f"{mean:+.{digits}f} ± {float(np.std(diffs, ddof=1)):.{digits}f} (n={len(diffs)})"


# -- gains with paired intervals over the eval items ------------------------------------------
def scored_items(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, zero-shot scores, final scores) of a complete run whose eval_items.npz holds round 0
    and a trained round; None otherwise."""
    labels, rounds = run["items"]
    if 0 not in rounds or len(rounds) < 2:
        return None
    return labels, rounds[0], rounds[max(rounds)]


def gain_pairs(methods: dict[str, list[dict]], method: str, against: str | None) -> dict[int, tuple]:
    """Per seed with per-item records in both runs: (labels, before scores, after scores), `method`'s
    final round after; before is the same run's zero-shot round (against=None) or `against`'s final."""
    mine = {r["seed"]: (r, s) for r in methods.get(method, []) if (s := scored_items(r))}
    if against is None:
        return {seed: scored for seed, (_, scored) in mine.items()}
    theirs = {r["seed"]: (r, s) for r in methods.get(against, []) if (s := scored_items(r))}
    pairs = {}
    for seed in sorted(mine.keys() & theirs.keys()):
        (run, (labels, _, final)), (other, (other_labels, _, other_final)) = mine[seed], theirs[seed]
        if not np.array_equal(labels, other_labels):
            raise ValueError(f"{run['path']} and {other['path']} were evaluated on different items")
        pairs[seed] = (labels, other_final, final)
    return pairs


def item_gains(pairs: dict[int, tuple]) -> dict[str, PairedDifference]:
    """after - before in accuracy and loss over the seeds of `pairs`, by seed_averaged_difference."""
    scored = list(pairs.values())
    return {name: seed_averaged_difference([measure(before, y) for y, before, _ in scored],
                                           [measure(after, y) for y, _, after in scored])
            for name, measure in (("accuracy", item_correct), ("loss", item_losses))}


def _interval(d: PairedDifference, digits: int) -> str:
    return f"{d.diff:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def _seeds(runs: list[dict], used: dict[int, tuple]) -> str:
    """The seeds used, then why each other run is not."""
    why = [f"seed {r['seed']} " + (unfinished_label(r) if r["summary"] is None else "no per-item records")
           for r in runs if r["seed"] not in used]
    return "; ".join([", ".join(str(s) for s in used) or "none", *why])


def gains_table(methods: dict[str, list[dict]]) -> list[str]:
    if not any(scored_items(r) for rs in methods.values() for r in rs):
        return ["Per-item eval records (eval_items.npz with the zero-shot round 0) are not in these runs' "
                "complete folders: no paired intervals.", ""]
    rows = []
    for method, runs in methods.items():
        own, paired = gain_pairs(methods, method, None), gain_pairs(methods, method, "fedavg")
        cells = ["n/a"] * 6
        if own:
            zero = item_gains(own)
            acc, loss = zero["accuracy"], zero["loss"]
            cells = [f"{acc.after:.3f}", f"{loss.after:.4f}", _interval(acc, 3), f"{acc.p_value:.2g}",
                     _interval(loss, 4), f"{loss.p_value:.2g}"]
        if method == "fedavg":
            versus = ["—"] * 5
        elif paired:
            fedavg = item_gains(paired)
            acc, loss = fedavg["accuracy"], fedavg["loss"]
            versus = [", ".join(str(s) for s in paired), _interval(acc, 3), f"{acc.p_value:.2g}",
                      _interval(loss, 4), f"{loss.p_value:.2g}"]
        else:
            versus = ["none"] + ["n/a"] * 4
        rows.append([method_label(method), _seeds(runs, own), *cells, *versus])
    header = ["Method", "Seeds", "Final acc", "Final loss", "Δ acc vs zero-shot [95% CI]", "p",
              "Δ loss vs zero-shot [95% CI]", "p", "Seeds paired with FedAvg", "Δ acc vs FedAvg [95% CI]", "p",
              "Δ loss vs FedAvg [95% CI]", "p"]
    lines = ["Final = last evaluated round, zero-shot = round 0 of the same run; the same eval items in every "
             "run. Every item is scored once per seed, so the item is the independent unit: each item's "
             "correctness (accuracy) and cross-entropy over the 4 scores (loss) are averaged over the seeds "
             "complete in both compared runs, and the interval and p-value are a paired t test over the items "
             "of those averages (`stats.seed_averaged_difference`, scipy.stats.ttest_rel). Final acc and loss: "
             "the mean over the method's seeds. Chance: accuracy 0.25, loss ln 4 = 1.3863.", ""]
    return lines + _table(header, rows) + per_seed_gains(methods)


def _per_seed_cell(pair: tuple | None, what: str, run: dict) -> str:
    if run["summary"] is None:
        return unfinished_label(run)
    if pair is None:
        return "n/a"
    labels, before, after = pair
    if what == "accuracy":
        d, digits = accuracy_difference(item_correct(before, labels), item_correct(after, labels)), 3
    else:
        d, digits = loss_difference(item_losses(before, labels), item_losses(after, labels)), 4
    return f"{_interval(d, digits)} p={d.p_value:.2g}"


def per_seed_gains(methods: dict[str, list[dict]]) -> list[str]:
    rows = []
    for method, runs in methods.items():
        own, paired = gain_pairs(methods, method, None), gain_pairs(methods, method, "fedavg")
        for run in runs:
            seed = run["seed"]
            versus = [_per_seed_cell(paired.get(seed), what, run) if method != "fedavg" else "—"
                      for what in ("accuracy", "loss")]
            rows.append([method_label(method), str(seed), _per_seed_cell(own.get(seed), "accuracy", run),
                         _per_seed_cell(own.get(seed), "loss", run), *versus])
    header = ["Method", "Seed", "Δ acc vs zero-shot [95% CI]", "Δ loss vs zero-shot [95% CI]",
              "Δ acc vs FedAvg [95% CI]", "Δ loss vs FedAvg [95% CI]"]
    return ["##### Per seed", "",
            "One run against one run on the same items. Accuracy: exact McNemar (binomial test on the items "
            "that changed), Clopper-Pearson interval (`stats.accuracy_difference`); loss: paired t interval "
            "over the items (`stats.loss_difference`).", ""] + _table(header, rows)


# -- client drift -----------------------------------------------------------------------------
DRIFT_COLUMNS = [("Drift, mean over rounds", "mean", 3), ("Drift, round 1", "first", 3),
                 ("Drift, last round", "last", 3), ("Penalty share", "share", 4)]


def drift_values(run: dict) -> dict[str, float]:
    """Mean client drift over rounds and clients, in round 1 and in the last round, and the mean
    penalty share over rounds; only the keys the run's metrics carry."""
    rounds = [m for m in run["metrics"] if m.round > 0 and m.client_update_norm]
    shares = [m.penalty_share for m in run["metrics"] if m.round > 0 and m.penalty_share is not None]
    values = {}
    if rounds:
        values["mean"] = float(np.mean(np.concatenate([m.client_update_norm for m in rounds])))
        values["last"] = float(np.mean(rounds[-1].client_update_norm))
        if rounds[0].round == 1:
            values["first"] = float(np.mean(rounds[0].client_update_norm))
    if shares:
        values["share"] = float(np.mean(shares))
    return values


def drift_table(methods: dict[str, list[dict]]) -> list[str]:
    if not any(m.client_update_norm for rs in methods.values() for r in rs for m in r["metrics"]):
        return ["Client drift is not recorded in these runs (metrics.jsonl has no `client_update_norm`).", ""]
    note = ("Drift = ||ΔW_k − ΔW_start||_F over all LoRA layers: how far a sampled client's merged update "
            "moved from the round's starting global during its local steps, averaged over the round's "
            "clients (and over rounds for the first column). Penalty share = client penalty / (task loss + "
            "penalty), mean over clients and rounds (0 without a client penalty). Mean ± population std "
            "(ddof=0) over complete seeds; n/a where the runs did not record it.")
    return run_values_table(methods, DRIFT_COLUMNS, drift_values, note)


# -- penalty strength grid --------------------------------------------------------------------
def penalty_weights(run: dict) -> list[float]:
    """(mu, a_B, lam) the run trained with: its config's switch, else its method's preset."""
    method = run["config"].method
    preset = METHODS[method.name].penalty
    return [getattr(preset, k) if (v := getattr(method, k)) is None else v for k in ("mu", "a_b", "lam")]


def _setup(run: dict) -> str:
    """The run's resolved config without the method section: equal for the cells of one grid."""
    flat = _flatten(run["config"].model_dump(mode="json"))
    return json.dumps({k: v for k, v in flat.items() if not k.startswith("method.")}, sort_keys=True)


def grid_section(grid: Path, sweep_runs: list[dict]) -> list[str]:
    """One row per run of the grid folder, plus the runs of --sweeps with the grid's configuration and
    the Subspace-Reg preset's or its server-only ablation's penalty."""
    lines = [f"## Penalty strength grid `{grid.name}`", "", f"Source: `{grid}`", ""]
    if not grid.is_dir():
        return lines + [f"`{grid}` does not exist: the grid was not run.", ""]
    runs = collect_runs(grid)
    setups = {_setup(r) for r in runs}
    runs += [r for r in sweep_runs if r["method"] in ("subspace", "subspace-server-only") and _setup(r) in setups]
    rows = []
    for run in sorted(runs, key=lambda r: (penalty_weights(r), r["path"])):
        weights = [f"{w:g}" for w in penalty_weights(run)]
        if run["summary"] is None:
            rows.append([run["path"], *weights, *[unfinished_label(run)] * 8])
            continue
        gain = ["n/a", "n/a"]
        if scored := scored_items(run):
            labels, zero, final = scored
            d = accuracy_difference(item_correct(zero, labels), item_correct(final, labels))
            gain = [_interval(d, 3), f"{d.p_value:.2g}"]
        geometry, drift = last_geometry(run), drift_values(run)
        rows.append([run["path"], *weights, _fmt(_value(run, "final_accuracy"), 3),
                     _fmt(_value(run, "final_loss"), 4), *gain, _fmt(_num(geometry.get("basis_overlap")), 4),
                     _fmt(_num(geometry.get("basis_overlap_code")), 5), _fmt(drift.get("share"), 4),
                     _fmt(drift.get("mean"), 3)])
    header = ["Run", "mu", "a_B", "lam", "Final acc", "Final loss", "Δ acc vs zero-shot [95% CI]", "p",
              "Basis overlap (paper)", "Basis overlap (code)", "Penalty share", "Drift, mean over rounds"]
    lines += ["One run per cell. mu, a_B, lam: the client penalty the run trained with (its config, else its "
              "method's preset). Runs of --sweeps with the grid's configuration are included: Subspace-Reg is "
              "the preset cell (0.05, 0.01, 1e-05), subspace-server-only the cell without penalty (0, 0, 0). "
              "Δ acc: final - zero-shot on the same items, exact McNemar with Clopper-Pearson interval "
              "(`stats.accuracy_difference`). Basis overlap: last round. Penalty share and drift as in the "
              "client-drift tables.", ""]
    return lines + _table(header, rows)


# -- differential privacy study --------------------------------------------------------------
def privacy_section(folder: Path) -> list[str]:
    """Methods x noise multipliers of a folder of sweep folders (`make reproduce-privacy`): mean ±
    sample std over complete seeds of the final scores, the gain over zero-shot and the loss
    against the same method without noise, both paired over items, the last round's basis
    overlap and the epsilon spent."""
    lines = [f"## Differential privacy `{folder.name}`", "", f"Source: `{folder}`", ""]
    if not folder.is_dir():
        return lines + [f"`{folder}` does not exist: the study was not run.", ""]
    runs = collect_runs(folder)
    cells: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for run in runs:
        cells[run["method"], run["config"].privacy.noise_multiplier].append(run)
    complete = {cell: [r for r in group if r["summary"] is not None] for cell, group in cells.items()}
    rows = []
    for (method, sigma), group in sorted(cells.items(), key=lambda kv: (method_order(kv[0][0]), kv[0][1])):
        done = complete[method, sigma]
        pairs = gain_pairs({method: done}, method, None)
        gain = item_gains(pairs)["accuracy"] if pairs else None
        noise_cost = "—"
        if sigma:
            noisy = gain_pairs({"noisy": done, "clean": complete.get((method, 0.0), [])}, "noisy", "clean")
            noise_cost = _interval(item_gains(noisy)["loss"], 4) if noisy else "n/a"
        last = [r["metrics"][-1] for r in done]
        rows.append([method_label(method), f"{sigma:g}", _count(group),
                     _cell([_value(r, "final_accuracy") for r in done], 1, 3),
                     _cell([_value(r, "final_loss") for r in done], 1, 4),
                     _interval(gain, 3) if gain else "n/a", noise_cost,
                     _cell([v for r in done if (v := _num(last_geometry(r).get("basis_overlap"))) is not None], 1, 4),
                     _cell([m.privacy_epsilon for m in last if m.privacy_epsilon is not None], 1, 3),
                     _cell([float(np.mean(m.contribution_norms)) for m in last if m.contribution_norms], 1, 3)])
    header = ["Method", "Noise multiplier", "Seeds", "Final acc", "Final loss", "Δ acc vs zero-shot [95% CI]",
              "Δ loss vs no noise [95% CI]", "Basis overlap (paper)", "Epsilon", "Contribution norm"]
    return lines + ["Mean ± sample std (ddof=1) over complete seeds. Δ acc: final - zero-shot on the same items, "
                    "each item averaged over seeds, paired t over items (`stats.seed_averaged_difference`). "
                    "Δ loss vs no noise: final loss - the same method's with noise multiplier 0, paired the "
                    "same way over the seeds both have. "
                    "Epsilon: cumulative at `privacy.delta` after the last round (Flower's RDP accountant; "
                    "inf without noise). Contribution norm: last round's mean, as received.", ""] + _table(header, rows)


# -- plots, provenance ------------------------------------------------------------------------
def write_plots(methods: dict[str, list[dict]], model: str, folder: Path, page: Path) -> list[str]:
    runs = [(method_label(m), r["metrics"]) for m, rs in methods.items() for r in rs if r["summary"] is not None]
    if not runs:
        return ["No complete run to plot yet.", ""]
    written = {p.name: p for p in plot_comparison(runs, folder, model=Path(model).name or model)}
    lines = []
    for key, caption in PLOT_KEYS:
        name = f"compare_{_slug(Path(model).name or model)}_{key}.png"
        if name in written:
            rel = os.path.relpath(written[name], page.parent)
            lines.append(f"![{caption}]({Path(rel).as_posix()})")
    return lines + ["", "Plots: mean ± std (ddof=0) over the complete seeds of each method.", ""]


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def provenance(runs: list[dict], sweep_dir: Path) -> list[str]:
    """The sweep command, the shared resolved config and every key that differs between runs."""
    flats = [_flatten(r["config"].model_dump(mode="json")) for r in runs]
    varying = sorted({k for f in flats for k in f if any(g.get(k) != f.get(k) for g in flats)})
    sweep_keys = {"model.name", "method.name", "seed"}
    methods = ",".join(dict.fromkeys(r["method"] for r in runs))
    seeds = ",".join(str(s) for s in sorted({r["seed"] for r in runs}))
    models = ",".join(dict.fromkeys(r["model"] for r in runs))
    first = runs[0]
    lines = ["Commands (every run's resolved config.yaml is in its run folder):", "", "```bash"]
    if set(varying) <= sweep_keys:
        lines.append(f"fedlora sweep {sweep_dir / first['run_dir'] / 'config.yaml'} --methods {methods} "
                     f"--seeds {seeds} --models {models} --out {sweep_dir}")
    lines += ["```", "", "<details><summary>One command per run</summary>", "", "```bash"]
    for run in runs:
        lines.append(f"fedlora run {sweep_dir / run['run_dir'] / 'config.yaml'} --out {sweep_dir / run['run_dir']}")
    lines += ["```", "", "</details>", ""]
    shared = {k: v for k, v in flats[0].items() if k not in varying}
    lines += ["Resolved configuration shared by every run:", "", "```yaml",
              yaml.safe_dump(_unflatten(shared), sort_keys=False).rstrip(), "```", ""]
    if varying:
        rows = [[r["run_dir"], *(str(f.get(k)) for k in varying)] for r, f in zip(runs, flats)]
        lines += ["Keys that differ between runs:", ""] + _table(["run", *varying], rows)
    return lines


def _unflatten(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def machine_lines(runs: list[dict]) -> list[str]:
    threads = sorted({str(r["config"].threads or "torch default") for r in runs})
    devices = sorted({r["config"].device for r in runs})
    walls = [v for r in runs if (v := _value(r, "wall_s")) is not None]
    total = f"{sum(walls):.1f} s over {len(walls)} complete runs" if walls else "no complete run"
    machines = [r["summary"].machine or {} for r in runs if r["summary"] is not None]
    commits = sorted({str(m.get("git_commit") or "not recorded") for m in machines})
    return [f"- code (summary.json `machine.git_commit`): {', '.join(commits) or 'no complete run'}",
            f"- CPU count (machine that rendered this page): {os.cpu_count()}; platform {platform.platform()}",
            f"- torch threads (config `threads`): {', '.join(threads)}; device (config): {', '.join(devices)}",
            f"- wall time (summary.json `wall_s`): {total}; per run in the per-run table", ""]


# -- the page ---------------------------------------------------------------------------------
def sweep_section(sweep_dir: Path, runs: list[dict], page: Path, used: set[str]) -> list[str]:
    slug = _slug(sweep_dir.name)
    while slug in used:
        slug += "_"
    used.add(slug)
    plot_dir = page.parent / page.stem / slug
    lines = [f"## Sweep `{sweep_dir.name}`", "", f"Source: `{sweep_dir}`", ""]
    for model, methods in _by_model_method(runs).items():
        lines += [f"### {model}", "",
                  "#### Results (mean ± population std, ddof=0, as the reference table)", ""]
        lines += results_table(methods, ddof=0)
        lines += ["#### Results (mean ± sample std, ddof=1)", ""] + results_table(methods, ddof=1)
        lines += ["#### Per run", ""] + per_run_table(methods) + zero_shot_lines(methods)
        lines += ["#### Geometry of the last round", ""] + geometry_table(methods)
        lines += ["#### Clients' own models and bytes on the wire", ""] + client_table(methods)
        lines += ["#### Accuracy and overlap per round", ""] + write_plots(methods, model, plot_dir, page)
        lines += ["#### Direction of each finding vs the reference study", "",
                  "Orderings of the means over complete seeds (of raw values: for the loss, higher is worse); "
                  "a pair reproduces when our ordering, at the precision shown, matches the reference's. The "
                  "last column counts the seeds, complete in both methods, whose own ordering matches it.", ""]
        lines += direction_table(methods, model)
        lines += ["#### Attribution ablation", ""] + attribution_table(methods)
        lines += ["#### Gains over zero-shot and over FedAvg, paired over the eval items", ""] + gains_table(methods)
        lines += ["#### Client drift", ""] + drift_table(methods)
    lines += ["### Commands and configuration", ""] + provenance(runs, sweep_dir)
    lines += ["### Machine", ""] + machine_lines(runs)
    return lines


def reference_section() -> list[str]:
    lines = ["## Reference study", "", "RoBERTa-large: 3 seeds, mean ± population std (ddof=0) where given.", ""]
    keys = ["best_accuracy", "mean_last5_accuracy", "final_accuracy", "final_loss", "overlap"]

    def cell(name: str, method: str, key: str) -> str:
        value = REFERENCE[name][method].get(key)
        std = REFERENCE_STD.get(name, {}).get(method, {}).get(key)
        return "—" if value is None else f"{value:g}" + ("" if std is None else f" ± {std:g}")

    for name, table in REFERENCE.items():
        rows = [[method_label(m), *(cell(name, m, k) for k in keys)] for m in table]
        lines += [f"**{name}**", ""] + _table(["Method", "Best acc", "Mean last-5", "Final acc", "Final loss",
                                                "Basis overlap"], rows)
    return lines + ["SmolLM-360M values are as reported; its overlap is the reference-code definition.", ""]


TITLE = "fedlora: reproduction of the reference study"


def render(sweeps: list[str | Path], out: str | Path, grid: str | Path | None = None,
           privacy: str | Path | None = None, title: str = TITLE) -> str:
    """Write the markdown page `out` (and its plots beside it), with the penalty grid folder `grid`
    and the privacy study folder `privacy` when given; return the markdown."""
    out = Path(out)
    lines = [f"# {title}", "",
             "Generated by `python -m fedlora.reproduction`; every number comes from the run folders. "
             "Runs that did not finish are marked, not dropped.", "", INTERPRETATION, ""]
    used: set[str] = set()
    sweep_runs = []
    for sweep_dir in sweeps:
        if not Path(sweep_dir).is_dir():  # a study not run (yet) on this machine
            lines += [f"## Sweep `{Path(sweep_dir).name}`", "", f"`{sweep_dir}` does not exist: not run yet.", ""]
            continue
        runs = collect_runs(sweep_dir)
        sweep_runs += runs
        lines += sweep_section(Path(sweep_dir), runs, out, used)
    if grid is not None:
        lines += grid_section(Path(grid), sweep_runs)
    if privacy is not None:
        lines += privacy_section(Path(privacy))
    lines += reference_section()
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", nargs="+", required=True, help="sweep folders")
    parser.add_argument("--grid", help="penalty strength grid: a folder of sweep folders (may not exist yet)")
    parser.add_argument("--privacy", help="privacy study: a folder of sweep folders (may not exist yet)")
    parser.add_argument("--out", required=True, help="markdown file to write (plots go beside it)")
    parser.add_argument("--title", default=TITLE, help="the page's title")
    args = parser.parse_args(argv)
    try:
        render(args.sweeps, args.out, args.grid, args.privacy, args.title)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
