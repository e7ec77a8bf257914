"""Command line: `hyperunmix run | estimate | bench | datasets | show`.

Expected user errors (bad input files, parameters, configs, output folders) end the command with
one line `error: ...` on stderr and exit code 2, like typer's own usage errors; anything else is a
bug and shows its traceback (without local variables, which can hold whole scenes).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Optional

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Hyperspectral unmixing: GAUSS and the classic baselines.")
console = Console()
USAGE_EXIT_CODE = 2  # what typer (click) returns for a usage error


class EchoHandler(logging.Handler):
    """Log lines (bands dropped, the HySime estimate) to stderr as plain text; the stream is
    looked up per line, so it follows whatever stderr is when the line is written."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(self.format(record), err=True)


@app.callback()
def show_log_lines() -> None:
    logger = logging.getLogger("hyperunmix")
    if not any(isinstance(h, EchoHandler) for h in logger.handlers):
        logger.addHandler(EchoHandler())
    logger.setLevel(logging.INFO)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_sets(pairs: list[str]) -> dict:
    """['epochs=20', 'mn=linear'] -> {'epochs': 20, 'mn': 'linear'} (values parsed as YAML)."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {pair!r}: cannot parse the value ({one_line(err)})") from None
    return params


def read_config(path: Path | None) -> dict:
    if path is None:
        return {}
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({one_line(err)})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def split_list(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def parse_endmembers(text: str | None) -> int | str | None:
    """'--endmembers 4' -> 4, 'auto' -> 'auto'."""
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--endmembers expects a whole number or 'auto', got {text!r}") from None


def describe(err: Exception) -> str:
    if isinstance(err, ValidationError):  # pydantic: one clause per bad field
        return "bad config: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']} (got {e['input']!r})" for e in err.errors())
    return str(err)


def fail(message: str) -> NoReturn:
    # Plain stderr, not rich: rich would wrap long lines and read "[...]" in messages as markup.
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code=USAGE_EXIT_CODE)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (ValueError covers SceneError, parameter and config errors;
    OSError covers files and folders; TypeError an unknown method parameter) into `fail`."""
    try:
        yield
    except (ValueError, TypeError, OSError) as err:
        fail(describe(err))


@app.command()
def run(
    dataset: Optional[str] = typer.Option(None, help="dataset name (see `hyperunmix datasets`)"),
    input_: Optional[Path] = typer.Option(None, "--input",
                                          help="scene file: .mat, .npz/.npy, ENVI (.hdr), GeoTIFF or other raster"),
    method: Optional[str] = typer.Option(None, help="method name, e.g. gauss, vca-fcls"),
    endmembers: Optional[str] = typer.Option(None, help="number of endmembers, or 'auto' (HySime estimate); "
                                                        "default: the scene's ground truth"),
    drop_bands: Optional[str] = typer.Option(None, help="bands to drop: '1350-1450nm,1800-1950nm' or '0-5,100-110'"),
    seed: Optional[int] = typer.Option(None, help="random seed"),
    window: Optional[str] = typer.Option(None, help="fit on part of the scene, 'row0:row1,col0:col1' (0-based, "
                                                    "end excluded), then unmix the whole scene"),
    set_: list[str] = typer.Option([], "--set", help="method parameter key=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/SCENE-METHOD-seedN)"),
    config: Optional[Path] = typer.Option(None, help="YAML with dataset, method, seed, params"),
    figures: bool = typer.Option(True, help="write figures"),
    overwrite: bool = typer.Option(False, help="replace a run already in the output folder"),
) -> None:
    """Fit one method on a dataset or a file; write estimates.mat, abundances.tif, endmembers.csv,
    metrics.json, config.yaml, figures."""
    from hyperunmix.datasets import open_scene
    from hyperunmix.methods.training import report_progress
    from hyperunmix.run import RunConfig, run_method

    with user_errors():
        values = read_config(config)
        overrides = {"dataset": dataset, "input": None if input_ is None else str(input_), "method": method,
                     "seed": seed, "endmembers": parse_endmembers(endmembers), "window": window}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["params"] = {**(values.get("params") or {}), **parse_sets(set_)}
        if drop_bands is not None:
            values["dataset_options"] = {**(values.get("dataset_options") or {}), "drop_bands": drop_bands}
        cfg = RunConfig(**values)
        scene = open_scene(cfg.dataset, cfg.input, **cfg.dataset_options)
        out = out or Path("runs") / f"{scene.name}-{cfg.method}-seed{cfg.seed}"
        label = f"fitting {cfg.method} on {scene.name} (seed {cfg.seed})"
        with console.status(label) as status, report_progress(
                lambda stage, done, total: status.update(f"{label}: {stage}, epoch {done}/{total}")):
            metrics = run_method(scene, cfg.method, cfg.seed, cfg.params, out, figures=figures,
                                 dataset_options=cfg.dataset_options, overwrite=overwrite,
                                 n_endmembers=cfg.endmembers, input_path=cfg.input, window=cfg.window)
    print_metrics(metrics)
    console.print(f"written to [bold]{out}[/bold]")


@app.command()
def estimate(
    scene_file: Path = typer.Argument(..., help="scene file (any format `run --input` reads)"),
    out: Optional[Path] = typer.Option(None, help="folder for eigenvalues.png (default runs/SCENE-estimate)"),
    drop_bands: Optional[str] = typer.Option(None, help="bands to drop: '1350-1450nm,1800-1950nm' or '0-5,100-110'"),
    false_alarm: float = typer.Option(1e-3, help="false-alarm probability of the HFC / NWHFC test"),
) -> None:
    """How many materials: HySime, HFC and NWHFC estimates, and their eigenvalue plot."""
    from hyperunmix.estimate import estimate_all
    from hyperunmix.figures import estimate_plot
    from hyperunmix.loaders import load_scene

    with user_errors():
        scene = load_scene(scene_file, drop_bands=drop_bands)
        results = estimate_all(scene.Y, false_alarm)
        for name, result in results.items():
            typer.echo(f"{name}: {result.n_endmembers}")
        path = estimate_plot(results, (out or Path("runs") / f"{scene.name}-estimate") / "eigenvalues.png",
                             scene.name)
    console.print(f"eigenvalue plot: [bold]{path}[/bold]")


@app.command()
def bench(
    datasets: Optional[str] = typer.Option(None, help="comma-separated dataset names"),
    methods: Optional[str] = typer.Option(None, help="comma-separated method names"),
    seeds: Optional[str] = typer.Option(None, help="e.g. 0-4 or 0,1,2"),
    out: Path = typer.Option(Path("runs/bench"), help="output directory"),
    config: Optional[Path] = typer.Option(None, help="YAML with datasets, methods, seeds, params"),
    figures: Optional[str] = typer.Option(None, help="per-run figures: all, first-seed, none"),
    resume: bool = typer.Option(True, "--resume/--fresh",
                                help="keep finished runs in OUT made with the same settings (--fresh: rerun all)"),
    ray: Optional[str] = typer.Option(None, "--ray", help="run the grid as Ray tasks: 'auto' (the cluster on this "
                                                          "machine, or a new local one) or a cluster address"),
) -> None:
    """Datasets x methods x seeds: results.csv, summary.md (mean ± std), figures."""
    from hyperunmix.bench import BenchConfig, markdown_table, run_bench

    with user_errors():
        values = read_config(config)
        overrides = {"datasets": split_list(datasets), "methods": split_list(methods), "seeds": seeds,
                     "figures": figures}
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = BenchConfig(**values)
        total = len(cfg.datasets) * len(cfg.methods) * len(cfg.seeds)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        # The progress display closes before an error reaches user_errors, so the message stands alone.
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("benchmark", total=total)
            started = [False]

            def advance(label: str) -> None:
                if started[0]:
                    progress.advance(task)
                started[0] = True
                progress.update(task, description=label)

            rows, summary = run_bench(cfg, out, on_progress=advance, resume=resume, ray_address=ray)
            progress.update(task, completed=total, description="done")
    print(markdown_table(summary))  # plain print: rich would wrap the table's long lines
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        console.print(f"[yellow]{len(failed)} run(s) failed; see {out / 'errors.log'}[/yellow]")
    console.print(f"results in [bold]{out}[/bold] (results.csv, summary.md, figures)")


@app.command("datasets")
def list_cmd() -> None:
    """The datasets the package knows, whether their files are present, and where."""
    from hyperunmix.datasets import data_dir, list_datasets

    table = Table(title=f"datasets (data directory: {data_dir()})")
    for column in ("name", "p", "H x W x L", "available", "path"):
        table.add_column(column)
    for row in list_datasets():
        shape = " x ".join(map(str, row["shape"])) if row["shape"] else "?"
        table.add_row(row["name"], str(row["p"]), shape, "yes" if row["available"] else "[red]no[/red]", row["path"])
    console.print(table)


@app.command()
def show(run_dir: Path = typer.Argument(..., help="a run directory (or a bench directory)")) -> None:
    """Print the metrics and configuration of a run, or the table of a benchmark."""
    from hyperunmix.run import load_run

    if (run_dir / "summary.md").exists():
        print((run_dir / "summary.md").read_text())
        return
    with user_errors():
        metrics, config = load_run(run_dir)
    print_metrics(metrics)
    console.print(yaml.safe_dump(config, sort_keys=False))
    figures = sorted(p.name for p in run_dir.glob("*.png"))
    console.print(f"figures: {', '.join(figures) if figures else 'none'}")


def print_metrics(metrics: dict) -> None:
    table = Table(title=f"{metrics.get('method')} on {metrics.get('dataset')} (seed {metrics.get('seed')})")
    table.add_column("metric")
    table.add_column("value")
    for key in ("n_endmembers", "hysime_estimate", "mean_sad_deg", "sad_deg", "armse", "armse_per_endmember",
                "sre_db", "reconstruction_rmse", "fit_time_s", "matching"):
        if key in metrics:
            value = metrics[key]
            text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) \
                if isinstance(value, list) else (f"{value:.4g}" if isinstance(value, float) else str(value))
            table.add_row(key, text)
    console.print(table)


if __name__ == "__main__":
    app()
