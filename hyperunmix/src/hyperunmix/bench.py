"""Datasets x methods x seeds: results.csv, a mean +- std markdown table, figures."""
from __future__ import annotations

import csv
import io
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hyperunmix.datasets import load_dataset
from hyperunmix.files import atomic_write
from hyperunmix.locks import folder_lock
from hyperunmix.run import finished_run, redraw_figures, run_method

CSV_COLUMNS = ["dataset", "method", "seed", "status", "mean_sad_deg", "mean_sad_rad", "armse", "armse_x100",
               "sre_db", "reconstruction_rmse", "fit_time_s", "wall_time_s", "sad_deg", "armse_per_endmember",
               "matching", "error"]
SUMMARY_KEYS = ["mean_sad_deg", "armse", "sre_db", "reconstruction_rmse", "fit_time_s"]


def parse_seeds(text: str | int | list) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,5' -> [0, 2, 5]; also accepts ints and lists."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, list):
        return [int(s) for s in text]
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1)
                seeds.extend(range(int(low), int(high) + 1))
            elif part:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(f"bad seed list {text!r}: expected e.g. '0-4' or '0,1,2'") from None
    if not seeds:
        raise ValueError(f"bad seed list {text!r}: no seeds")
    return seeds


def _check_known(names: list[str], registry, what: str) -> list[str]:
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {', '.join(registry)}")
    return names


class BenchConfig(BaseModel):
    """A benchmark (accepted by `hyperunmix bench --config`)."""

    model_config = ConfigDict(extra="forbid")
    datasets: list[str] = Field(default_factory=lambda: ["samson", "jasper-ridge"])
    methods: list[str] = Field(default_factory=lambda: ["vca-fcls", "nfindr-fcls", "kmeans-fcls", "nmf", "oracle-fcls"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # method -> params
    figures: str = "first-seed"  # "all", "first-seed" or "none" (per-run figures)

    @field_validator("seeds", mode="before")
    @classmethod
    def expand_seeds(cls, value):
        return parse_seeds(value)

    @field_validator("methods")
    @classmethod
    def known_methods(cls, value):
        from hyperunmix.methods import METHODS

        return _check_known(value, METHODS, "method")

    @field_validator("datasets")
    @classmethod
    def known_datasets(cls, value):
        from hyperunmix.datasets import DATASETS

        return _check_known(value, DATASETS, "dataset")

    @field_validator("figures")
    @classmethod
    def known_figure_mode(cls, value):
        if value not in ("all", "first-seed", "none"):
            raise ValueError(f"figures must be 'all', 'first-seed' or 'none', got {value!r}")
        return value


def run_bench(config: BenchConfig, out_dir: str | Path, on_progress: Callable[[str], None] | None = None,
              resume: bool = True, ray_address: str | None = None) -> tuple[list[dict], list[dict]]:
    """Run every (dataset, method, seed); a failing run is recorded, not fatal. With `resume`, a run
    folder already holding a finished run with the same settings and the same scene is kept. The
    folder is locked while the benchmark runs; errors.log lists this attempt's failures only.
    `ray_address` ("auto" or a cluster address): the runs are Ray tasks (`hyperunmix.distributed`),
    with the same results. Returns (rows, summary)."""
    with folder_lock(out_dir) as out:
        (out / "errors.log").unlink(missing_ok=True)
        if ray_address is None:
            rows = [run_one(*job, out, resume) for job in jobs(config, on_progress)]
        else:
            from hyperunmix.distributed import run_on_ray

            rows = run_on_ray(list(jobs(config, None)), out, resume, ray_address, on_progress)
        summary = summarise(rows)
        write_outputs(out, rows, summary, config)
    return rows, summary


def jobs(config: BenchConfig, on_progress: Callable[[str], None] | None):
    """(scene, method, seed, params, figures) for every run, each scene loaded once."""
    for dataset in config.datasets:
        scene = load_dataset(dataset)
        for method in config.methods:
            params = config.params.get(method)
            for index, seed in enumerate(config.seeds):
                if on_progress:
                    on_progress(f"{dataset} / {method} / seed {seed}")
                figures = config.figures == "all" or (config.figures == "first-seed" and index == 0)
                yield scene, method, seed, params, figures


def run_one(scene, method: str, seed: int, params: dict | None, figures: bool, out: Path, resume: bool) -> dict:
    """One run's row of results.csv; a failure is logged to errors.log (appended as it happens, so
    an interrupted benchmark keeps the log of what failed so far)."""
    run_dir = out / "runs" / scene.name / method / f"seed{seed}"
    try:
        metrics = finished_run(run_dir, scene, method, seed, params) if resume else None
        if metrics is None:
            metrics = run_method(scene, method, seed, params, run_dir, figures=figures, overwrite=True)
        elif figures and not (run_dir / "abundances.png").is_file():
            redraw_figures(run_dir)
        return {**metrics, "status": "ok"}
    except Exception as err:  # one broken method must not lose the other results
        with open(out / "errors.log", "a") as log:
            log.write(f"== {scene.name} / {method} / seed {seed}\n{traceback.format_exc()}\n")
        return {"dataset": scene.name, "method": method, "seed": seed, "status": "failed",
                "error": f"{type(err).__name__}: {err}"}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds for each (dataset, method), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["method"]), []).append(row)
    summary = []
    for (dataset, method), group in groups.items():
        ok = [r for r in group if r["status"] == "ok"]
        entry: dict[str, Any] = {"dataset": dataset, "method": method, "runs": len(ok), "failed": len(group) - len(ok)}
        for key in SUMMARY_KEYS:
            values = np.array([r[key] for r in ok if key in r], dtype=float)
            if values.size:
                entry[f"{key}_mean"], entry[f"{key}_std"] = float(values.mean()), float(values.std())
        summary.append(entry)
    return summary


def cell(entry: dict, key: str, digits: int) -> str:
    if f"{key}_mean" not in entry:
        return "n/a"
    return f"{entry[f'{key}_mean']:.{digits}f} ± {entry[f'{key}_std']:.{digits}f}"


def markdown_table(summary: list[dict]) -> str:
    lines = ["| dataset | method | mean SAD (deg) | aRMSE | SRE (dB) | recon. RMSE | time (s) | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in summary:
        runs = f"{entry['runs']}" + (f" ({entry['failed']} failed)" if entry["failed"] else "")
        lines.append(f"| {entry['dataset']} | {entry['method']} | {cell(entry, 'mean_sad_deg', 2)} | "
                     f"{cell(entry, 'armse', 3)} | {cell(entry, 'sre_db', 2)} | "
                     f"{cell(entry, 'reconstruction_rmse', 4)} | {cell(entry, 'fit_time_s', 2)} | {runs} |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        flat = {k: (" ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else v)
                for k, v in row.items()}
        writer.writerow(flat)
    return buffer.getvalue()


def write_outputs(out: Path, rows: list[dict], summary: list[dict], config: BenchConfig) -> None:
    import yaml

    from hyperunmix import figures

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.csv", lambda handle: handle.write(csv_text(rows)), mode="w")
    table = markdown_table(summary)
    atomic_write(out / "summary.md", lambda handle: handle.write(
        f"Mean ± std over seeds {config.seeds}; SAD after Hungarian matching on spectral angle.\n\n{table}"), mode="w")
    atomic_write(out / "config.yaml", lambda handle: yaml.safe_dump(config.model_dump(), handle, sort_keys=False),
                 mode="w")
    for dataset in dict.fromkeys(entry["dataset"] for entry in summary):
        figures.bench_bars(summary, out / f"bench_{dataset}.png", dataset)
