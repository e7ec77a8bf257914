"""Local Flower federations on 127.0.0.1: a SuperLink and N SuperNodes (or a simulation
SuperLink) started as separate processes, driven with the `flwr` CLI, stopped by PID.

Every process is started in its own session, so stopping it by its PID also stops the helper
processes Flower spawns under it (SuperExec, ServerApp/ClientApp processes): SIGTERM to the
process group whose id is that PID, SIGKILL after a grace period. Nothing is found or killed
by name. The Flower CLI state (connections, installed apps) lives in a private FLWR_HOME.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tomli_w

from fedlora.files import atomic_write_text
from fedlora.flower.certs import NodeKeys, TlsFiles, make_node_keys, make_tls_certs
from fedlora.flower.settings import default_run_config

log = logging.getLogger("fedlora.flower.deploy")

# No telemetry, no update checks, no Ray usage reports: nothing leaves the machine.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
CONNECTION = "fedlora"
APP_NAME = "fedlora-flower"
FINISHED = "finished"


def apply_quiet_env() -> None:
    os.environ.update(QUIET_ENV)


def app_pyproject() -> str:
    """pyproject.toml of the Flower app: components and every run-config key with its default."""
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME, "version": "0.1.0", "license": "MIT",
            "description": "fedlora on Flower: the package's local update and aggregation as ClientApp/ServerApp",
            "dependencies": ["flwr[simulation]==1.42.0", "fedlora"],
        },
        "tool": {"flwr": {"app": {
            "publisher": "fedlora",
            "components": {"serverapp": "fedlora.flower.server_app:app",
                           "clientapp": "fedlora.flower.client_app:app"},
            "config": default_run_config(),
        }}},
    }
    return tomli_w.dumps(doc)


def write_app(folder: str | Path) -> Path:
    """Write the Flower app folder (the components live in the installed fedlora package)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "pyproject.toml", app_pyproject())
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_command(name: str) -> str:
    """A Flower console script of this Python environment (beside the interpreter)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found beside {sys.executable}; install Flower with "
                                "`pip install 'fedlora[flower]'`")
    return str(path)


@dataclass
class Managed:
    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def _descendants(pid: int) -> list:
    """Snapshot of the process tree under `pid` (psutil ships with Flower's simulation extra)."""
    try:
        import psutil
    except ImportError:  # the process-group signal still reaches every helper in the group
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _stop_pids(procs: list, grace_s: float) -> None:
    """Terminate, then kill, the given psutil processes that are still running (by PID)."""
    if not procs:
        return
    import psutil

    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=5)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group started with the process: it and its helpers
    except (ProcessLookupError, PermissionError):
        pass


class ProcessGroup:
    """Processes started here, each stopped by its PID (and its process group)."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir, self.env = log_dir, env
        self.procs: dict[str, Managed] = {}

    def start(self, name: str, cmd: list[str]) -> Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = Managed(name, popen, log_path)
        log.info("started %s (pid %d): %s", name, popen.pid, " ".join(cmd))
        return self.procs[name]

    def stop(self, name: str, grace_s: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace_s`; then the same for descendants
        that Flower detached into sessions of their own (ServerApp, simulation, Ray workers)."""
        proc = self.procs[name]
        detached = _descendants(proc.pid)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)  # helpers that ignored SIGTERM
        try:
            proc.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) did not exit after SIGKILL", name, proc.pid)
        _stop_pids(detached, grace_s)

    def kill(self, name: str) -> None:
        """Abrupt failure (SIGKILL, no clean shutdown), as when a machine dies."""
        _signal_group(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].popen.wait(timeout=10)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):  # nodes before the link
            self.stop(name)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}


@dataclass
class RunStatus:
    run_id: int
    status: str  # pending | starting | running | finished:completed | finished:failed | ...
    details: str = ""
    raw: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status.startswith(FINISHED)

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


class LocalFederation:
    """A SuperLink (deployment or simulation mode) and SuperNodes on 127.0.0.1.

    Use as a context manager: every process is stopped on exit, also after an error."""

    def __init__(self, workdir: str | Path, nodes: int = 0, *, simulation: bool = False, tls: bool = False,
                 auth: bool = False, node_config: Callable[[int], str] | None = None,
                 env: dict[str, str] | None = None, startup_timeout_s: float = 60.0):
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (Flower refuses it on an insecure link)")
        if simulation and (nodes or auth):
            raise ValueError("a simulation SuperLink runs virtual nodes: no SuperNodes, no node auth")
        self.workdir = Path(workdir).resolve()
        self.nodes, self.simulation, self.tls, self.auth = nodes, simulation, tls, auth
        self.node_config = node_config or (lambda i: f"partition-id={i} num-partitions={nodes}")
        self.startup_timeout_s = startup_timeout_s
        self.flwr_home = self.workdir / "flwr-home"
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, **QUIET_ENV, **(env or {}), "FLWR_HOME": str(self.flwr_home),
                    "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        self.procs = ProcessGroup(self.workdir / "logs", self.env)
        self.port = 0
        self.tls_files: TlsFiles | None = None
        self.node_keys: dict[int, NodeKeys] = {}
        self.timings: dict[str, float] = {}

    # -- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> "LocalFederation":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.tls_files = make_tls_certs(self.workdir / "certs")
        self.start_superlink()
        self.write_connection()
        self.timings["superlink_start_s"] = time.perf_counter() - t0
        for i in range(self.nodes):
            if self.auth:
                self.node_keys[i] = make_node_keys(self.workdir / "keys", f"node{i}")
                self.register_node(self.node_keys[i])
            self.start_supernode(i)
        self.timings["start_s"] = time.perf_counter() - t0

    def stop(self) -> None:
        self.procs.stop_all()

    # -- SuperLink ----------------------------------------------------------------------------
    def _tls_args(self) -> list[str]:
        if not self.tls_files:
            return ["--insecure"]
        return ["--ssl-ca-certfile", str(self.tls_files.ca_cert), "--ssl-certfile", str(self.tls_files.server_cert),
                "--ssl-keyfile", str(self.tls_files.server_key)]

    def start_superlink(self) -> Managed:
        self.port = free_port()
        cmd = [flower_command("flower-superlink"), *self._tls_args(), "--host", "127.0.0.1",
               "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.simulation:
            cmd.append("--simulation")
        if self.auth:
            cmd.append("--enable-supernode-auth")
        proc = self.procs.start("superlink", cmd)
        self._wait_ready(proc)
        return proc

    def _wait_ready(self, proc: Managed) -> None:
        import httpx  # a Flower dependency

        scheme = "https" if self.tls_files else "http"
        verify: Any = ssl.create_default_context(cafile=str(self.tls_files.ca_cert)) if self.tls_files else False
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"flower-superlink exited with code {proc.popen.returncode}; "
                                   f"see {proc.log_path}:\n{_tail(proc.log_path)}")
            try:
                if httpx.get(f"{scheme}://127.0.0.1:{self.port}/health", verify=verify, timeout=1.0).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"SuperLink not ready on 127.0.0.1:{self.port} after {self.startup_timeout_s}s; "
                           f"see {proc.log_path}")

    def write_connection(self) -> Path:
        """The Flower CLI connection `fedlora` -> this SuperLink, in the private FLWR_HOME."""
        conn: dict[str, Any] = {"address": f"127.0.0.1:{self.port}"}
        if self.tls_files:
            conn["root-certificates"] = str(self.tls_files.ca_cert)
        else:
            conn["insecure"] = True
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        path = self.flwr_home / "config.toml"
        atomic_write_text(path, tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))
        return path

    # -- SuperNodes ---------------------------------------------------------------------------
    def register_node(self, keys: NodeKeys) -> int:
        out = self.flwr_json("supernode", "register", str(keys.public), CONNECTION)
        return int(out["node-id"])

    def supernode_command(self, index: int, keys: NodeKeys | None = None) -> list[str]:
        cmd = [flower_command("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
               "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", self.node_config(index)]
        cmd += ["--root-certificates", str(self.tls_files.ca_cert)] if self.tls_files else ["--insecure"]
        if keys is not None:
            cmd += ["--auth-supernode-private-key", str(keys.private)]
        return cmd

    def start_supernode(self, index: int, name: str | None = None, keys: NodeKeys | None = None,
                        extra: list[str] | None = None) -> Managed:
        keys = keys if keys is not None else self.node_keys.get(index)
        return self.procs.start(name or f"supernode{index}", self.supernode_command(index, keys) + (extra or []))

    # -- flwr CLI -----------------------------------------------------------------------------
    def flwr(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        # Run in the work folder: the flwr CLI inspects a pyproject.toml in its working directory
        # (legacy-config migration) and refuses to run beside one that is not a Flower app.
        return subprocess.run([flower_command("flwr"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL, cwd=self.workdir)

    def flwr_json(self, *args: str) -> dict:
        done = self.flwr(*args, "--format", "json")
        try:
            out = json.loads(done.stdout[done.stdout.index("{"):])
        except ValueError:
            raise RuntimeError(f"`flwr {' '.join(args)}` gave no JSON (exit {done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}") from None
        if not out.get("success", False):
            raise RuntimeError(f"`flwr {' '.join(args)}` failed: {out}")
        return out

    def submit(self, app_dir: str | Path, run_config: dict[str, Any],
               federation_config: dict[str, Any] | None = None) -> int:
        """`flwr run` the app with `run_config` (written to a TOML file); the new run's id."""
        overrides = self.workdir / f"run-config-{time.monotonic_ns()}.toml"
        atomic_write_text(overrides, tomli_w.dumps(run_config))
        args = ["run", str(app_dir), CONNECTION, "--run-config", str(overrides)]
        for key, value in (federation_config or {}).items():
            args += ["--federation-config", f"{key}={json.dumps(value)}"]
        out = self.flwr_json(*args)
        return int(out["run-id"])

    def run_status(self, run_id: int) -> RunStatus:
        out = self.flwr_json("ls", CONNECTION, "--run-id", str(run_id))
        row = next(r for r in out["runs"] if int(r["run-id"]) == run_id)
        return RunStatus(run_id, row["status"], row.get("status-details", ""), row)

    def wait_run(self, run_id: int, timeout_s: float, poll_s: float = 1.0,
                 on_poll: Callable[[], None] | None = None) -> RunStatus:
        """Poll `flwr ls` until the run finishes (`flwr run` itself does not wait or report failure)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.run_status(run_id)
            if status.finished:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status.status} after {timeout_s}s; logs in "
                                   f"{self.procs.log_dir}")
            dead = [n for n, p in self.procs.procs.items() if n == "superlink" and not p.alive()]
            if dead:
                raise RuntimeError(f"the SuperLink exited during run {run_id}; see {self.procs.log_dir}")
            if on_poll:
                on_poll()
            time.sleep(poll_s)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
