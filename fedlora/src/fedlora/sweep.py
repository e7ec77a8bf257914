"""Sweeps over methods x seeds x models, and the report built from a sweep folder."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from fedlora.config import RunConfig, with_method_variant
from fedlora.engine import train_federation
from fedlora.files import atomic_write_text
from fedlora.lock import folder_lock
from fedlora.methods import variant_label
from fedlora.plots import _slug, plot_comparison
from fedlora.progress import Progress
from fedlora.rundir import RunDir
from fedlora.summary import SPEC_COLUMNS, markdown_table, read_results_csv, write_results_csv

Log = Callable[[str], None]


def run_folder(sweep_dir: Path, model: str, method: str, seed: int) -> Path:
    """Where a run of `method` (a label: a name or a variant such as `subspace:mu=0.5`) goes."""
    return Path(sweep_dir) / _slug(Path(model).name or model) / _slug(method) / f"seed{seed}"


def sweep(base: RunConfig, out: str | Path, methods: list[str], seeds: list[int],
          models: list[str] | None = None, log: Log = print, progress: bool = False) -> Path:
    """Run every (model, method, seed); complete runs are kept, interrupted ones resumed.

    A method is a name or a variant (`subspace:mu=0.5`, see `config.with_method_variant`); each
    variant has its own run folders.

    The sweep folder is locked while this runs: a second sweep into it is refused.
    """
    out = Path(out)
    labels = [variant_label(with_method_variant(base, v).method) for v in methods]  # bad ones fail here
    if len(set(labels)) < len(labels):
        raise ValueError(f"methods name the same variant more than once: {methods}")
    with folder_lock(out, "sweep folder"):
        for model in models or [base.model.name]:
            for seed in seeds:
                for method in methods:
                    _sweep_run(base, out, model, method, seed, log, progress)
        report(out)
    return out


def _sweep_run(base: RunConfig, out: Path, model: str, variant: str, seed: int, log: Log, progress: bool) -> None:
    cfg = with_method_variant(base, variant)
    cfg.model.name = model
    cfg.seed = seed
    method = variant_label(cfg.method)
    folder = run_folder(out, model, method, seed)
    run = RunDir(folder)
    if run.is_complete:
        log(f"[skip] {folder} is complete")
        return
    resume = run.has_checkpoint
    log(f"[run] model={model} method={method} seed={seed} -> {folder}")
    bar = Progress(enabled=progress, label=f"{method}/s{seed}")
    train_federation(cfg, folder, resume=resume, overwrite=not resume, log=log, progress=bar)


def collect(sweep_dir: Path) -> list[dict]:
    """One row per run folder under `sweep_dir` (unfinished runs marked, not dropped)."""
    rows = []
    for config in sorted(Path(sweep_dir).rglob("config.yaml")):
        run = RunDir(config.parent)
        cfg = run.load_config()
        row = {"model": cfg.model.name, "method": variant_label(cfg.method), "seed": cfg.seed,
               "run_dir": str(config.parent.relative_to(sweep_dir)), "status": run.status}
        if run.is_complete:
            summary = run.read_summary().to_json()
            row.update(summary, **{k: v for k, v in summary.get("method_spec", {}).items() if k in SPEC_COLUMNS})
            row["status"] = "complete"
        rows.append(row)
    return rows


def report(sweep_dir: str | Path) -> str:
    """Write results.csv, table.md and comparison plots for a sweep folder; return the table."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if not rows:
        raise FileNotFoundError(f"no run folders (config.yaml) under {sweep_dir}")
    write_results_csv(rows, sweep_dir / "results.csv")
    rows = read_results_csv(sweep_dir / "results.csv")
    table = "\n".join([
        "## Results (population std, ddof=0, as the reference table)", "",
        markdown_table(rows, ddof=0),
        "## Results (sample std, ddof=1)", "",
        markdown_table(rows, ddof=1),
    ])
    atomic_write_text(sweep_dir / "table.md", table)
    for model in sorted({r["model"] for r in rows}):
        runs = [(r["method"], RunDir(sweep_dir / r["run_dir"]).read_metrics())
                for r in rows if r["model"] == model]
        plot_comparison(runs, sweep_dir / "plots", model=Path(model).name or model)
    return table
