"""`fedlora flower ...`: the same runs on Flower (simulation or a local deployment).

Mounted into the main CLI with `app.add_typer(flower_app, name="flower")`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from fedlora.cli import _fail, _log, user_errors
from fedlora.records import RunSummary

flower_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                         help="Run fedlora on Flower: local simulation or SuperLink + SuperNodes on 127.0.0.1.")


def _setup(config: Path, set_: Optional[List[str]], out: Optional[Path], kind: str, verbose: bool):
    from fedlora.config import load_config

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = load_config(config, set_ or [])
    out = out or Path("runs") / f"{config.stem}-{cfg.method.name}-s{cfg.seed}-{kind}"
    return cfg, out


def _report(summary: RunSummary, out: Path) -> None:
    _log(f"run folder: {out}")
    typer.echo(summary.line())


SET = typer.Option(None, "--set", help="override, e.g. method.name=fedsvd")
OUT = typer.Option(None, help="run folder (default runs/<config>-<method>-s<seed>-flower-...)")
MIN_REPLIES = typer.Option(1, help="fail a round when fewer replies arrive")
ROUND_TIMEOUT = typer.Option(600.0, help="seconds to wait for the replies of one round")
TIMEOUT = typer.Option(3600.0, help="seconds to wait for the whole run")
CLIENT_EVAL = typer.Option(False, help="sampled clients also score the new global on their own data")
VERBOSE = typer.Option(False, "--verbose", "-v", help="log process starts and Flower calls")
SECAGG = typer.Option(False, "--secure-aggregation", help="Flower's SecAgg+: the server sees only the updates' sum")
SECAGG_RANGE = typer.Option(8.0, help="SecAgg+: every contribution entry must lie in [-range, range]")
SECAGG_THRESHOLD = typer.Option(0.67, help="SecAgg+: fraction of key shares that rebuilds a dropped client's masks")


@flower_app.command()
def simulate(config: Path = typer.Argument(..., help="YAML config"), set_: Optional[List[str]] = SET,
             out: Optional[Path] = OUT, min_replies: int = MIN_REPLIES, round_timeout: float = ROUND_TIMEOUT,
             timeout: float = TIMEOUT, client_eval: bool = CLIENT_EVAL,
             cpus_per_client: int = typer.Option(1, help="CPUs Ray reserves per virtual client"),
             secure_aggregation: bool = SECAGG, secagg_clipping_range: float = SECAGG_RANGE,
             secagg_threshold: float = SECAGG_THRESHOLD, verbose: bool = VERBOSE) -> None:
    """N virtual clients on Flower's simulation engine (a simulation SuperLink + `flwr run`)."""
    from fedlora.flower.run import FlowerRunFailed, flower_simulate

    try:
        cfg, out = _setup(config, set_, out, "flower-sim", verbose)
        summary = flower_simulate(cfg, out, timeout_s=timeout, cpus_per_client=cpus_per_client, log=_log,
                                  min_replies=min_replies, round_timeout_s=round_timeout, client_eval=client_eval,
                                  secure_aggregation=secure_aggregation, secagg_clipping_range=secagg_clipping_range,
                                  secagg_threshold=secagg_threshold)
    except (*user_errors(), FlowerRunFailed) as err:
        _fail(err)
    _report(summary, out)


@flower_app.command()
def deploy(config: Path = typer.Argument(..., help="YAML config"), set_: Optional[List[str]] = SET,
           out: Optional[Path] = OUT,
           nodes: Optional[int] = typer.Option(
               None, help="SuperNodes (one per client; default federation.num_clients)"),
           tls: bool = typer.Option(False, help="TLS with a fresh self-signed CA"),
           auth: bool = typer.Option(False, help="SuperNode authentication (needs --tls)"),
           min_replies: int = MIN_REPLIES, round_timeout: float = ROUND_TIMEOUT, timeout: float = TIMEOUT,
           client_eval: bool = CLIENT_EVAL, secure_aggregation: bool = SECAGG,
           secagg_clipping_range: float = SECAGG_RANGE, secagg_threshold: float = SECAGG_THRESHOLD,
           verbose: bool = VERBOSE) -> None:
    """One SuperLink and one SuperNode per client as processes on 127.0.0.1, then `flwr run`."""
    from fedlora.flower.run import FlowerRunFailed, flower_deploy

    try:
        cfg, out = _setup(config, set_, out, "flower-deploy", verbose)
        summary = flower_deploy(cfg, out, nodes=nodes, tls=tls, auth=auth, timeout_s=timeout, log=_log,
                                min_replies=min_replies, round_timeout_s=round_timeout, client_eval=client_eval,
                                secure_aggregation=secure_aggregation, secagg_clipping_range=secagg_clipping_range,
                                secagg_threshold=secagg_threshold)
    except (*user_errors(), FlowerRunFailed) as err:
        _fail(err)
    _report(summary, out)


@flower_app.command()
def certs(folder: Path = typer.Argument(..., help="where to write the files"),
          nodes: int = typer.Option(0, help="also make this many SuperNode auth key pairs")) -> None:
    """Self-signed CA + SuperLink certificate for 127.0.0.1 and SuperNode keys (local trials only)."""
    from fedlora.flower.certs import make_node_keys, make_tls_certs

    tls = make_tls_certs(folder)
    typer.echo(f"CA {tls.ca_cert}\nSuperLink certificate {tls.server_cert}\nSuperLink key {tls.server_key}")
    for i in range(nodes):
        keys = make_node_keys(folder, f"node{i}")
        typer.echo(f"SuperNode {i}: private {keys.private}, public {keys.public}")


@flower_app.command("app")
def write_app_folder(folder: Path = typer.Argument(..., help="folder for the Flower app (pyproject.toml)")) -> None:
    """Write the Flower app folder for `flwr run FOLDER CONNECTION` by hand."""
    from fedlora.flower.deploy import write_app

    typer.echo(str(write_app(folder) / "pyproject.toml"))
