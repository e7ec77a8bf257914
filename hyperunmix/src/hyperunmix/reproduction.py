"""The reproduction report: benchmark folders -> one markdown page with tables, anchors and figures.

    python -m hyperunmix.reproduction --bench runs/bench [...] --out docs/results/hyperunmix.md

Numbers come from each benchmark's results.csv (or, for a benchmark still running, from the
metrics.json of the runs it finished). Cells of the benchmark grid (config.yaml: datasets x
methods x seeds) without a finished run are marked, never dropped. The paragraphs that interpret
the results are written by hand in the README.md beside the page, which rendering never touches.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import yaml

from hyperunmix.files import atomic_write
from hyperunmix.run import redraw_figures

INTERPRETATION = ("What these numbers say is written by hand in [README.md](README.md) beside this page; "
                  "rendering never touches it.")
DDOF = 0  # population std, as `hyperunmix bench` writes in summary.md
# (column title, results.csv key, digits)
# A column no finished run has a value for (SAD on a scene without ground truth) is left out.
COLUMNS = [("mean SAD (deg)", "mean_sad_deg", 2), ("aRMSE", "armse", 3),
           ("reconstruction RMSE", "reconstruction_rmse", 4), ("fit time (s)", "fit_time_s", 2)]
# Figures quoted in the issue: (dataset, method) -> (mean SAD in degrees or None, aRMSE).
ANCHORS = {
    ("samson", "vca-fcls"): (4.13, 0.258),
    ("samson", "nfindr-fcls"): (4.02, 0.323),
    ("samson", "kmeans-fcls"): (12.4, 0.238),
    ("jasper-ridge", "vca-fcls"): (19.6, 0.246),
    ("jasper-ridge", "nfindr-fcls"): (9.19, 0.159),
    ("jasper-ridge", "kmeans-fcls"): (8.38, 0.240),
    ("jasper-ridge", "oracle-fcls"): (None, 0.085),
}
RUN_FIGURES = ["abundances.png", "endmembers.png", "training_curves.png"]


# -- collecting -------------------------------------------------------------------------------
def _number(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if math.isnan(number) else number


def read_rows(bench: Path) -> list[dict]:
    """Rows of results.csv; for a benchmark without one yet, the finished runs' metrics.json."""
    results = bench / "results.csv"
    if results.is_file():
        with open(results, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for line, row in enumerate(rows, start=2):
            missing = [k for k in ("dataset", "method", "seed", "status") if not row.get(k)]
            if missing:
                raise ValueError(f"{results}, line {line}: missing {', '.join(missing)}")
            row["seed"] = int(row["seed"])
        return rows
    rows = []
    for file in sorted(bench.glob("runs/*/*/seed*/metrics.json")):
        metrics = json.loads(file.read_text())
        rows.append({**{k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, "status": "ok"})
    return rows


def read_grid(bench: Path, rows: list[dict]) -> dict:
    """datasets, methods, seeds, params, figures of the benchmark (config.yaml, else the rows)."""
    config = bench / "config.yaml"
    if config.is_file():
        grid = yaml.safe_load(config.read_text()) or {}
        for key in ("datasets", "methods", "seeds"):
            if not isinstance(grid.get(key), list):
                raise ValueError(f"{config}: key {key!r} must be a list")
        return grid
    return {"datasets": list(dict.fromkeys(r["dataset"] for r in rows)),
            "methods": list(dict.fromkeys(r["method"] for r in rows)),
            "seeds": sorted({int(r["seed"]) for r in rows}), "params": {}, "figures": "unknown"}


def collect_bench(bench: str | Path) -> dict:
    bench = Path(bench)
    if not bench.is_dir():
        raise FileNotFoundError(f"benchmark folder {bench} does not exist")
    rows = read_rows(bench)
    if not rows and not (bench / "config.yaml").is_file():
        raise FileNotFoundError(f"{bench} holds neither results.csv, config.yaml nor finished runs")
    grid = read_grid(bench, rows)
    cells = {}
    for dataset in grid["datasets"]:
        for method in grid["methods"]:
            mine = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            cells[dataset, method] = cell_record(mine, [int(s) for s in grid["seeds"]])
    return {"path": bench, "rows": rows, "grid": grid, "cells": cells}


def cell_record(rows: list[dict], seeds: list[int]) -> dict:
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: int(r["seed"]))
    failed = sorted(int(r["seed"]) for r in rows if r["status"] != "ok")
    seen = {int(r["seed"]) for r in rows}
    return {"ok": ok, "failed": failed, "missing": [s for s in seeds if s not in seen], "expected": len(seeds)}


def _seeds(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ",".join(str(s) for s in seeds)


def unfinished_mark(cell: dict) -> str:
    parts = [f"{len(cell['ok'])}/{cell['expected']} seeds done"]
    if cell["missing"]:
        parts.append(f"{_seeds(cell['missing'])} not run")
    if cell["failed"]:
        parts.append(f"{_seeds(cell['failed'])} failed")
    return "unfinished (" + "; ".join(parts) + ")"


def values(cell: dict, key: str) -> list[float]:
    return [v for r in cell["ok"] if (v := _number(r.get(key))) is not None]


def mean_std_cell(numbers: list[float], digits: int) -> str:
    if not numbers:
        return "n/a"
    arr = np.asarray(numbers)
    if len(arr) == 1:
        return f"{arr[0]:.{digits}f}"
    return f"{arr.mean():.{digits}f} ± {arr.std(ddof=DDOF):.{digits}f}"


# -- tables -----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def results_table(bench: dict) -> list[str]:
    columns = [c for c in COLUMNS if any(values(cell, c[1]) for cell in bench["cells"].values())] or COLUMNS
    rows = []
    for (dataset, method), cell in bench["cells"].items():
        n = f"{len(cell['ok'])} of {cell['expected']}"
        if cell["missing"] or cell["failed"]:
            n += "; " + unfinished_mark(cell)
        if cell["ok"]:
            numbers = [mean_std_cell(values(cell, key), digits) for _, key, digits in columns]
        else:
            numbers = [unfinished_mark(cell)] * len(columns)
        rows.append([dataset, method, n, *numbers])
    return _table(["dataset", "method", "n", *(c[0] for c in columns)], rows)


def best_of_seeds_table(bench: dict) -> list[str]:
    """Per method, the lowest SAD and the lowest aRMSE over its finished seeds, each with its seed:
    what papers that report their best run quote. Scenes with ground truth only."""
    rows = []
    for (dataset, method), cell in bench["cells"].items():
        cells = []
        for key, digits in (("mean_sad_deg", 2), ("armse", 3)):
            scored = [(v, int(r["seed"])) for r in cell["ok"] if (v := _number(r.get(key))) is not None]
            if scored:
                value, seed = min(scored)
                cells.append(f"{value:.{digits}f} (seed {seed})")
        if len(cells) == 2:
            rows.append([dataset, method, f"{len(cell['ok'])} of {cell['expected']}", *cells])
    return _table(["dataset", "method", "n", "lowest mean SAD (deg)", "lowest aRMSE"], rows) if rows else []


def anchor_table(benches: list[dict]) -> list[str]:
    rows = []
    for (dataset, method), (sad, armse) in ANCHORS.items():
        found = [(b, b["cells"][dataset, method]) for b in benches if (dataset, method) in b["cells"]]
        if not found:
            rows.append([dataset, method, _anchor(sad, 2), "not run", "—", _anchor(armse, 3), "not run", "—", "—", "—"])
        for bench, cell in found:
            rows.append([dataset, method, *_anchor_cells(cell, sad, armse), f"`{bench['path'].name}`"])
    header = ["dataset", "method", "issue SAD (deg)", "ours SAD (deg)", "Δ SAD", "issue aRMSE", "ours aRMSE",
              "Δ aRMSE", "n", "benchmark"]
    return _table(header, rows)


def _anchor(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _anchor_cells(cell: dict, sad: float | None, armse: float) -> list[str]:
    if not cell["ok"]:
        mark = unfinished_mark(cell)
        return [_anchor(sad, 2), mark, "—", _anchor(armse, 3), mark, "—", f"0 of {cell['expected']}"]
    ours_sad, ours_armse = values(cell, "mean_sad_deg"), values(cell, "armse")
    delta = lambda ours, ref, d: "—" if ref is None or not ours else f"{np.mean(ours) - ref:+.{d}f}"  # noqa: E731
    return [_anchor(sad, 2), mean_std_cell(ours_sad, 2), delta(ours_sad, sad, 2),
            _anchor(armse, 3), mean_std_cell(ours_armse, 3), delta(ours_armse, armse, 3),
            f"{len(cell['ok'])} of {cell['expected']}"]


# -- figures ----------------------------------------------------------------------------------
def is_real_scene(dataset: str) -> bool:
    from hyperunmix.datasets import DATASETS

    info = DATASETS.get(dataset)
    return info.synthetic is None if info else not dataset.startswith("synthetic")


def best_row(cell: dict) -> dict | None:
    """Lowest mean SAD (scenes with ground truth), else lowest reconstruction RMSE."""
    for key in ("mean_sad_deg", "reconstruction_rmse"):
        scored = [(v, int(r["seed"]), r) for r in cell["ok"] if (v := _number(r.get(key))) is not None]
        if scored:
            return min(scored, key=lambda t: (t[0], t[1]))[2]
    return None


def _copy(source: Path, target: Path) -> None:
    data = source.read_bytes()
    atomic_write(target, lambda handle: handle.write(data))


def figure_lines(bench: dict, page: Path, folder: Path) -> list[str]:
    """Copy the figures of the best run per (real scene, method) beside the page and link them.
    `folder` belongs to the page: figures of an earlier render that this one no longer links (a
    run that was the best before a rerun) are removed, so the folder holds what the page shows."""
    lines, root, linked = [], bench["path"], set()

    def link(path: Path) -> str:
        linked.add(path)
        return Path(os.path.relpath(path, page.parent)).as_posix()

    for dataset in bench["grid"]["datasets"]:
        if not is_real_scene(dataset):
            continue
        overview = root / f"bench_{dataset}.png"
        lines += [f"**{dataset}**", ""]
        if overview.is_file():
            _copy(overview, folder / overview.name)
            lines += [f"![{dataset}: mean ± std per method]({link(folder / overview.name)})", ""]
        for method in bench["grid"]["methods"]:
            lines.append(f"- {method}: " + _method_figures(bench, dataset, method, folder, link))
        lines.append("")
    for stale in sorted(folder.rglob("*.png")) if folder.is_dir() else []:
        if stale not in linked:
            stale.unlink()
    return lines or ["No real scene in this benchmark.", ""]


def _method_figures(bench: dict, dataset: str, method: str, folder: Path, link) -> str:
    cell = bench["cells"][dataset, method]
    best = best_row(cell)
    if best is None:
        return unfinished_mark(cell) if not cell["ok"] else "no score to rank the runs"
    seed = int(best["seed"])
    run = bench["path"] / "runs" / dataset / method / f"seed{seed}"
    score = (f"mean SAD {float(best['mean_sad_deg']):.2f} deg" if _number(best.get("mean_sad_deg")) is not None
             else f"reconstruction RMSE {float(best['reconstruction_rmse']):.4f}")
    if not (run / "abundances.png").is_file() and (run / "estimates.mat").is_file():
        redraw_figures(run)  # the bench drew only the first seed's figures
    found = [run / name for name in RUN_FIGURES if (run / name).is_file()]
    if not found:
        params = bench["grid"].get("params", {}).get(method, {}) or {}
        sets = "".join(f" --set {k}={json.dumps(v)}" for k, v in params.items())
        return (f"best seed {seed} ({score}); its figures were not written (bench `figures: "
                f"{bench['grid'].get('figures')}`); to draw them: `hyperunmix run --dataset {dataset} "
                f"--method {method} --seed {seed}{sets} --out {run}`")
    links = []
    for figure in found:
        target = folder / dataset / method / f"seed{seed}_{figure.name}"
        _copy(figure, target)
        links.append(f"[{figure.stem}]({link(target)})")
    return f"best seed {seed} ({score}): " + ", ".join(links)


# -- provenance -------------------------------------------------------------------------------
def provenance_lines(bench: dict) -> list[str]:
    root, grid = bench["path"], bench["grid"]
    lines = ["```bash", f"hyperunmix bench --config {root / 'config.yaml'} --out {root}", "```", ""]
    if (root / "config.yaml").is_file():
        lines += ["Benchmark configuration (config.yaml):", "", "```yaml", (root / "config.yaml").read_text().rstrip(),
                  "```", ""]
    else:
        lines += [f"No config.yaml in {root}; grid inferred from the rows: {grid}", ""]
    env = _environment(root)
    walls = [v for r in bench["rows"] if r.get("status") == "ok" and (v := _number(r.get("wall_time_s"))) is not None]
    fits = [v for r in bench["rows"] if r.get("status") == "ok" and (v := _number(r.get("fit_time_s"))) is not None]
    lines += [f"- CPU count (machine that rendered this page): {os.cpu_count()}; platform {platform.platform()}",
              f"- threads and versions when the runs ran (the runs' config.yaml `environment`): {env}",
              f"- total fit time {sum(fits):.1f} s, total wall time {sum(walls):.1f} s over {len(walls)} runs", ""]
    return lines


def _environment(root: Path) -> str:
    """Each distinct `environment` of the runs' config.yaml, with the datasets and number of runs."""
    found: dict[str, dict[str, int]] = {}
    for config in sorted(root.glob("runs/*/*/seed*/config.yaml")):
        env = (yaml.safe_load(config.read_text()) or {}).get("environment")
        if env:
            datasets = found.setdefault(json.dumps(env), {})
            dataset = config.parents[2].name
            datasets[dataset] = datasets.get(dataset, 0) + 1
    if not found:
        return "not recorded (no run config.yaml)"
    return "; ".join(f"{env} ({', '.join(f'{d}: {n} runs' for d, n in datasets.items())})"
                     for env, datasets in found.items())


# -- the page ---------------------------------------------------------------------------------
def bench_section(bench: dict, page: Path, slug: str) -> list[str]:
    folder = page.parent / page.stem / slug
    lines = [f"## Benchmark `{bench['path'].name}`", "", f"Source: `{bench['path']}`", "",
             "### Results", "",
             f"Mean ± population std (ddof={DDOF}) over the finished seeds; SAD after Hungarian matching "
             "on spectral angle.", ""]
    lines += results_table(bench)
    best = best_of_seeds_table(bench)
    if best:
        lines += ["### Best of the seeds", "",
                  "For comparison with papers that report their best run: per method, the lowest mean SAD "
                  "and, separately, the lowest aRMSE over its finished seeds (each with its seed).", ""] + best
    lines += ["### Figures of the best run per method (real scenes)", ""] + figure_lines(bench, page, folder)
    lines += ["### Commands, configuration and machine", ""] + provenance_lines(bench)
    return lines


def render(benches: list[str | Path], out: str | Path) -> str:
    """Write the markdown page `out` (figures copied beside it); return the markdown."""
    out = Path(out)
    collected = [collect_bench(b) for b in benches]
    lines = ["# hyperunmix: reproduction of the issue's figures", "",
             "Generated by `python -m hyperunmix.reproduction`; every number comes from the benchmark folders. "
             "Cells without a finished run are marked, not dropped.", "", INTERPRETATION, "",
             "## Against the issue's anchor figures", "",
             "Ours: mean ± population std (ddof=0) over finished seeds; Δ = our mean − the issue's figure.", ""]
    lines += anchor_table(collected)
    used: set[str] = set()
    for bench in collected:
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in bench["path"].name)
        while slug in used:
            slug += "_"
        used.add(slug)
        lines += bench_section(bench, out, slug)
    text = "\n".join(lines).rstrip() + "\n"
    atomic_write(out, lambda handle: handle.write(text), mode="w")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", nargs="+", required=True, help="benchmark folders (hyperunmix bench --out)")
    parser.add_argument("--out", required=True, help="markdown file to write (figures go beside it)")
    args = parser.parse_args(argv)
    try:
        render(args.bench, args.out)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
