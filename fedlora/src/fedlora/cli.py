"""Command line: fedlora run | sweep | report | resume."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

# Tracebacks never print local variables: they can hold whole configs, tensors or paths.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Federated LoRA fine-tuning with subspace-aware aggregation.")
console = Console(stderr=True)


def _log(msg: str) -> None:
    console.print(msg, markup=False, highlight=False, soft_wrap=True)


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause and fix (bad config, data, model, paths, a busy folder, no network):
    reported as one `error:` line and exit code 2. Anything else is a bug and keeps its traceback."""
    from fedlora.lock import FolderBusy

    return (ValueError, OSError, FolderBusy)  # ConfigError, DataError, ModelError, RunDirError are ValueErrors


def _fail(err: BaseException) -> None:
    # soft_wrap: one line however long (rich would otherwise wrap it at the terminal width)
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _int_list(text: str, option: str) -> list[int]:
    """`42,43,44` or `42-44` (or a mix) as a list of integers; anything else names the option."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part[1:].partition("-")  # part[0] may be a minus sign
        try:
            first, last = (int(part[0] + lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise ValueError(f"{option}: {part!r} is not an integer or a range like 42-44") from None
        if last < first:
            raise ValueError(f"{option}: the range {part!r} is empty (it must go upwards, e.g. 42-44)")
        out.extend(range(first, last + 1))
    if not out:
        raise ValueError(f"{option}: no values in {text!r}; expected e.g. 42,43,44 or 42-44")
    return out


def _default_out(kind: str, name: str) -> Path:
    return Path(kind) / name


@app.command()
def run(config: Path = typer.Argument(..., help="YAML config"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. method.name=fedavg"),
        out: Optional[Path] = typer.Option(None, help="run folder (default runs/<config>-<method>-s<seed>)"),
        overwrite: bool = typer.Option(False, help="replace an existing run folder"),
        progress: bool = typer.Option(True, help="progress bars")) -> None:
    """Run one federated training run."""
    from fedlora.config import load_config
    from fedlora.engine import train_federation
    from fedlora.progress import Progress

    try:
        cfg = load_config(config, set_ or [])
        out = out or _default_out("runs", f"{config.stem}-{cfg.method.name}-s{cfg.seed}")
        summary = train_federation(cfg, out, overwrite=overwrite, log=_log,
                                   progress=Progress(enabled=progress, console=console, label=cfg.method.name))
    except user_errors() as err:
        _fail(err)
    _log(f"run folder: {out}")
    typer.echo(summary.line())


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="run folder to continue"),
           progress: bool = typer.Option(True, help="progress bars")) -> None:
    """Continue an interrupted run from its last checkpoint."""
    from fedlora.engine import train_federation
    from fedlora.progress import Progress
    from fedlora.rundir import RunDir

    try:
        if RunDir(run_dir).is_complete:
            raise ValueError(f"{run_dir} is already complete")
        summary = train_federation(None, run_dir, resume=True, log=_log,
                                   progress=Progress(enabled=progress, console=console))
    except user_errors() as err:
        _fail(err)
    typer.echo(summary.line())


@app.command()
def sweep(config: Path = typer.Argument(..., help="YAML config (the base of every run)"),
          methods: str = typer.Option("fedavg,svd,fedsvd,subspace",
                                      help="comma-separated method names or variants, e.g. subspace,subspace:mu=0.5"),
          seeds: str = typer.Option("42,43,44", help="e.g. 42,43,44 or 42-44"),
          models: Optional[str] = typer.Option(None, help="comma-separated model names (default: the config's)"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. rounds=5"),
          out: Optional[Path] = typer.Option(None, help="sweep folder (default sweeps/<config>)"),
          progress: bool = typer.Option(True, help="progress bars")) -> None:
    """Run methods x seeds x models; writes results.csv, table.md and comparison plots."""
    from fedlora.config import load_config
    from fedlora.methods import METHODS
    from fedlora.sweep import sweep as run_sweep

    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in method_list if m.partition(":")[0] not in METHODS]
    try:
        if unknown or not method_list:
            raise ValueError(f"--methods: unknown method(s) {unknown or methods!r}; choose from {', '.join(METHODS)}")
        seed_list = _int_list(seeds, "--seeds")
        # Every run replaces the config's method by its own: the base is checked with the first one
        # listed (a setting such as federation.client_ranks may not suit the config's method), and
        # every listed variant with it before any run.
        cfg = load_config(config, [f"method.name={method_list[0].partition(':')[0]}", *(set_ or [])])
        out = out or _default_out("sweeps", config.stem)
        run_sweep(cfg, out, method_list, seed_list,
                  models=[m.strip() for m in models.split(",")] if models else None,
                  log=_log, progress=progress)
    except user_errors() as err:
        _fail(err)
    typer.echo((out / "table.md").read_text())
    _log(f"sweep folder: {out} (results.csv, table.md, plots/)")


@app.command()
def report(sweep_dir: Path = typer.Argument(..., help="sweep folder")) -> None:
    """Rebuild results.csv, table.md and the comparison plots of a sweep folder."""
    from fedlora.sweep import report as build_report

    try:
        typer.echo(build_report(sweep_dir))
    except user_errors() as err:
        _fail(err)


@app.command()
def methods(names: bool = typer.Option(False, "--names", help="only the names, comma-separated")) -> None:
    """List the registered methods: server rule, trained factors, client penalty."""
    from fedlora.methods import METHODS

    if names:
        typer.echo(",".join(METHODS))
        return
    for preset in METHODS.values():
        p = preset.penalty
        penalty = f"mu={p.mu:g} a_b={p.a_b:g} lam={p.lam:g}" if p.active else "none"
        typer.echo(f"{preset.name:22} server={preset.server:17} trains={'/'.join(preset.trains):5} "
                   f"penalty={penalty:28} {preset.summary}")


def _mount_flower() -> None:
    """`fedlora flower ...` when the optional Flower extra is installed."""
    try:
        from fedlora.flower.cli import flower_app
    except ImportError:  # pragma: no cover - without the [flower] extra
        return
    app.add_typer(flower_app, name="flower", help="Run the same methods on Flower (simulation or deployment).")


_mount_flower()


def main() -> None:  # pragma: no cover
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
