"""The reproduction report: sweep folders -> one markdown page with tables, plots and provenance.

    python -m fedlora.reproduction --sweeps sweeps/cpu-minilm [...] --out docs/results/fedlora.md

Every number is read from the run folders (summary.json, metrics.jsonl, config.yaml); runs that
did not finish are shown as such, never dropped. The paragraphs that interpret the results are
written by hand in the README.md beside the page, which rendering never touches.
"""
from __future__ import annotations

import argparse
import os
import platform
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import yaml

from fedlora.files import atomic_write_text
from fedlora.plots import _slug, plot_comparison
from fedlora.rundir import RunDir
from fedlora.summary import METHOD_LABELS, TABLE_COLUMNS, _cell, _num

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
        done = max((m["round"] for m in metrics if m["round"] > 0), default=0)
        record = {"model": cfg.model.name, "method": cfg.method.name, "seed": cfg.seed, "config": cfg,
                  "run_dir": config.parent.relative_to(sweep_dir).as_posix(), "status": run.status,
                  "rounds_done": done, "rounds_planned": cfg.rounds, "metrics": metrics, "summary": None}
        if run.is_complete:
            record["summary"] = run.read_summary()
        runs.append(record)
    if not runs:
        raise FileNotFoundError(f"no run folders (config.yaml) under {sweep_dir}")
    return runs


def unfinished_label(run: dict) -> str:
    failed = ", failed" if run["status"] == "failed" else ""
    return f"unfinished (round {run['rounds_done']}/{run['rounds_planned']}{failed})"


def _value(run: dict, key: str) -> float | None:
    return None if run["summary"] is None else _num(run["summary"].get(key))


def _by_model_method(runs: list[dict]) -> dict[str, dict[str, list[dict]]]:
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[run["model"]][run["method"]].append(run)
    order = list(METHOD_LABELS) + ["subspace-server-only", "fedavg-penalty"]
    rank = lambda m: (order.index(m) if m in order else len(order), m)  # noqa: E731
    return {model: {m: sorted(methods[m], key=lambda r: r["seed"]) for m in sorted(methods, key=rank)}
            for model, methods in grouped.items()}


def label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


# -- tables -----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def results_table(methods: dict[str, list[dict]], ddof: int) -> list[str]:
    """Methods as rows, mean ± std over complete seeds; a method without one shows why."""
    rows = []
    for method, runs in methods.items():
        done = [r for r in runs if r["summary"] is not None]
        open_runs = [r for r in runs if r["summary"] is None]
        n = f"{len(done)} of {len(runs)}" + "".join(
            f"; seed {r['seed']} {unfinished_label(r)}" for r in open_runs)
        if done:
            cells = [_cell([v for v in (_value(r, key) for r in done) if v is not None], ddof, digits)
                     for _, key, digits in TABLE_COLUMNS]
        else:
            cells = ["; ".join(unfinished_label(r) for r in open_runs)] * len(TABLE_COLUMNS)
        rows.append([label(method), n, *cells])
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
                cells += [str(run["summary"].get("best_round", "n/a")), _fmt(wall, 1)]
            rows.append([label(method), str(run["seed"]), run["status"], *cells])
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
    rounds = [m for m in run["metrics"] if m["round"] > 0 and m.get("geometry")]
    return rounds[-1]["geometry"] if rounds else {}


def geometry_table(methods: dict[str, list[dict]]) -> list[str]:
    rows = []
    for method, runs in methods.items():
        done = [r for r in runs if r["summary"] is not None]
        cells = [_cell([v for r in done if (v := _num(last_geometry(r).get(key))) is not None], 0, digits)
                 for _, key, digits in GEOMETRY_COLUMNS]
        rows.append([label(method), f"{len(done)} of {len(runs)}", *cells])
    lines = ["Client subspaces in the final round, mean ± population std (ddof=0) over complete seeds. "
             "Cancellation ratio = ||Σ p_k ΔW_k|| / Σ p_k ||ΔW_k|| (1: the clients' updates add up, "
             "lower: they cancel).", ""]
    return lines + _table(["Method", "n", *(c[0] for c in GEOMETRY_COLUMNS)], rows)


# -- direction of findings vs the reference ---------------------------------------------------
def reference_name(model: str) -> str:
    return "SmolLM-360M" if "smollm" in model.lower() else "RoBERTa-large"


def _mean(runs: list[dict], key: str) -> float | None:
    values = [v for r in runs if (v := _value(r, key)) is not None]
    return float(np.mean(values)) if values else None


def _ranking(values: dict[str, float]) -> str:
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    return " > ".join(label(m) for m, _ in ordered)


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
            claim = f"{label(hi)} > {label(lo)} ({ref[hi]:g} vs {ref[lo]:g})"
            diffs = paired_differences(methods, hi, lo, key)
            agree = f"{sum(d > 0 for d in diffs)} of {len(diffs)}" if diffs else "—"
            rows.append([name, f"{label(hi)} vs {label(lo)}", claim, *_our_direction(methods, ours, hi, lo, key),
                         agree])
    header = ["Metric", "Comparison", f"Reference ({reference_name(model)})", "This reproduction", "Verdict",
              "Seeds in the reference's direction"]
    return _table(header, rows)


def _our_direction(methods: dict[str, list[dict]], ours: dict, hi: str, lo: str, key: str) -> list[str]:
    missing = [m for m in (hi, lo) if ours[m] is None]
    if missing:
        why = "; ".join(f"{label(m)}: " + (", ".join(unfinished_label(r) for r in methods.get(m, []))
                                          or "not run") for m in missing)
        return [why, "unfinished"]
    digits = next((d for _, k, d in TABLE_COLUMNS if k == key), 4)
    a, b = round(ours[hi], digits), round(ours[lo], digits)  # equal at the table's precision: a tie
    sign = ">" if a > b else "<" if a < b else "="
    text = f"{label(hi)} {sign} {label(lo)} ({a:.{digits}f} vs {b:.{digits}f})"
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


# -- plots, provenance ------------------------------------------------------------------------
def write_plots(methods: dict[str, list[dict]], model: str, folder: Path, page: Path) -> list[str]:
    runs = [(label(m), r["metrics"]) for m, rs in methods.items() for r in rs if r["summary"] is not None]
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
    return [f"- CPU count (machine that rendered this page): {os.cpu_count()}; platform {platform.platform()}",
            f"- torch threads (config `threads`): {', '.join(threads)}; device (config): {', '.join(devices)}",
            f"- wall time (summary.json `wall_s`): {total}; per run in the per-run table", ""]


# -- the page ---------------------------------------------------------------------------------
def sweep_section(sweep_dir: Path, page: Path, used: set[str]) -> list[str]:
    runs = collect_runs(sweep_dir)
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
        lines += ["#### Accuracy and overlap per round", ""] + write_plots(methods, model, plot_dir, page)
        lines += ["#### Direction of each finding vs the reference study", "",
                  "Orderings of the means over complete seeds (of raw values: for the loss, higher is worse); "
                  "a pair reproduces when our ordering, at the precision shown, matches the reference's. The "
                  "last column counts the seeds, complete in both methods, whose own ordering matches it.", ""]
        lines += direction_table(methods, model)
        lines += ["#### Attribution ablation", ""] + attribution_table(methods)
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
        rows = [[label(m), *(cell(name, m, k) for k in keys)] for m in table]
        lines += [f"**{name}**", ""] + _table(["Method", "Best acc", "Mean last-5", "Final acc", "Final loss",
                                                "Basis overlap"], rows)
    return lines + ["SmolLM-360M values are as reported; its overlap is the reference-code definition.", ""]


def render(sweeps: list[str | Path], out: str | Path) -> str:
    """Write the markdown page `out` (and its plots beside it); return the markdown."""
    out = Path(out)
    lines = ["# fedlora: reproduction of the reference study", "",
             "Generated by `python -m fedlora.reproduction`; every number comes from the run folders. "
             "Runs that did not finish are marked, not dropped.", "", INTERPRETATION, ""]
    used: set[str] = set()
    for sweep_dir in sweeps:
        lines += sweep_section(Path(sweep_dir), out, used)
    lines += reference_section()
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", nargs="+", required=True, help="sweep folders")
    parser.add_argument("--out", required=True, help="markdown file to write (plots go beside it)")
    args = parser.parse_args(argv)
    try:
        render(args.sweeps, args.out)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
