"""One federated run on Flower, end to end: write the app, start the federation, `flwr run`,
wait for the run's status through `flwr ls`, stop every process, return the run summary."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from fedlora.config import RunConfig
from fedlora.files import atomic_write_json
from fedlora.flower.deploy import LocalFederation, RunStatus, write_app
from fedlora.flower.settings import FlowerSettings, to_run_config
from fedlora.records import RunSummary
from fedlora.rundir import RunDir

Log = Callable[[str], None]


class FlowerRunFailed(RuntimeError):
    """The Flower run ended in a state other than finished:completed."""


def _settings(cfg: RunConfig, engine: str, out: Path, **overrides) -> FlowerSettings:
    """The run's Flower settings, refused before any process starts where they cannot serve `cfg`."""
    settings = FlowerSettings(engine=engine, out_dir=str(out), **{k: v for k, v in overrides.items() if v is not None})
    if settings.secure_aggregation:
        from fedlora.flower.secagg import check_secure_aggregation

        check_secure_aggregation(cfg)
    return settings


def _finish(fl: LocalFederation, status: RunStatus, out: Path, timings: dict, log: Log) -> RunSummary:
    run_dir = RunDir(out)
    if out.exists():  # keep the Flower logs and timings beside the results
        shutil.copytree(fl.procs.log_dir, out / "flower-logs", dirs_exist_ok=True)
        atomic_write_json(out / "flower-logs" / "timings.json", {**fl.timings, **timings,
                                                                 "status": status.status})
    if not status.completed:
        error = run_dir.read_summary().to_json() if run_dir.is_complete else (
            (out / "status.json").read_text() if (out / "status.json").is_file() else "no run folder written")
        raise FlowerRunFailed(f"Flower run {status.run_id} ended {status.status} ({status.details}); "
                              f"run folder status: {error}; logs: {out / 'flower-logs'}")
    if not run_dir.is_complete:
        raise FlowerRunFailed(f"Flower reports run {status.run_id} completed but {out} holds no complete run")
    log(f"Flower run {status.run_id}: {status.status}")
    return run_dir.read_summary()


def _execute(fl: LocalFederation, cfg: RunConfig, settings: FlowerSettings, out: Path, timeout_s: float,
             federation_config: dict | None, on_poll, log: Log) -> RunSummary:
    app_dir = write_app(fl.workdir / "app")
    t0 = time.perf_counter()
    run_id = fl.submit(app_dir, to_run_config(cfg, settings), federation_config)
    log(f"submitted Flower run {run_id} (logs: {fl.procs.log_dir})")
    status = fl.wait_run(run_id, timeout_s, on_poll=(lambda: on_poll(fl)) if on_poll else None)
    return _finish(fl, status, out, {"run_s": time.perf_counter() - t0}, log)


def _prepare(out: str | Path) -> Path:
    out = Path(out).resolve()
    RunDir(out).check_free()  # fail before starting any process
    return out


def flower_simulate(cfg: RunConfig, out: str | Path, *, timeout_s: float = 3600.0, cpus_per_client: int = 1,
                    log: Log = print, **settings) -> RunSummary:
    """Run `cfg` on Flower's simulation engine (one virtual SuperNode per client)."""
    out = _prepare(out)
    settings_obj = _settings(cfg, "flower-simulation", out, **settings)
    federation_config = {"num-supernodes": cfg.federation.num_clients,
                         "client-resources-num-cpus": cpus_per_client}
    with tempfile.TemporaryDirectory(prefix="fedlora-flower-") as work:
        with LocalFederation(work, simulation=True) as fl:
            return _execute(fl, cfg, settings_obj, out, timeout_s, federation_config, None, log)


def flower_deploy(cfg: RunConfig, out: str | Path, *, nodes: int | None = None, tls: bool = False,
                  auth: bool = False, timeout_s: float = 3600.0, log: Log = print,
                  on_poll: Callable[[LocalFederation], None] | None = None, **settings) -> RunSummary:
    """Run `cfg` on a local deployment: one SuperLink and one SuperNode per client."""
    nodes = cfg.federation.num_clients if nodes is None else nodes
    if nodes != cfg.federation.num_clients:
        raise ValueError(f"one SuperNode per client: --nodes {nodes} but federation.num_clients="
                         f"{cfg.federation.num_clients} (set --set federation.num_clients={nodes})")
    out = _prepare(out)
    settings_obj = _settings(cfg, "flower-deployment", out, **settings)
    with tempfile.TemporaryDirectory(prefix="fedlora-flower-") as work:
        with LocalFederation(work, nodes=nodes, tls=tls, auth=auth) as fl:
            return _execute(fl, cfg, settings_obj, out, timeout_s, None, on_poll, log)
