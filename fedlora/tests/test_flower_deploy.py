"""Flower with real processes: the simulation engine, and a deployment of one SuperLink and three
SuperNodes on free loopback ports (plain, and with TLS + node authentication + a node killed
mid-run). Every process is stopped by PID at the end of each test, also when it fails."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
from test_flower import assert_same_run, read_metrics, tiny_config, write_tiny_setup

from fedlora.engine import train_federation
from fedlora.flower.deploy import LocalFederation, write_app
from fedlora.flower.run import flower_simulate
from fedlora.flower.settings import FlowerSettings, to_run_config
from fedlora.partition import sample_clients

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return write_tiny_setup(tmp_path_factory.mktemp("flower-setup"))


def assert_all_stopped(fl: LocalFederation) -> None:
    for name, proc in fl.procs.procs.items():
        assert proc.popen.poll() is not None, f"{name} (pid {proc.pid}) still running"
        assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("method", ["subspace", "fedsvd"])
def test_simulation_matches_the_in_process_engine(setup, tmp_path, method):
    cfg = tiny_config(setup, **{"method.name": method})
    train_federation(cfg, tmp_path / "engine")
    summary = flower_simulate(cfg, tmp_path / "flower", timeout_s=400, log=lambda _: None)
    assert summary.engine == "flower-simulation"
    engine = json.loads((tmp_path / "engine" / "summary.json").read_text())
    for key in ("best_accuracy", "final_accuracy", "final_loss", "basis_overlap", "basis_overlap_code"):
        assert getattr(summary, key) == pytest.approx(engine[key], abs=1e-6), key
    assert_same_run(read_metrics(tmp_path / "flower"), read_metrics(tmp_path / "engine"), tol=1e-6)
    assert (tmp_path / "flower" / "flower-logs" / "superlink.log").is_file()


def test_simulation_keeps_each_clients_personal_factors_on_its_node(setup, tmp_path):
    # FedSA-LoRA in Flower's simulation engine: a node's B must outlive the message that trained it
    # (context.state), or its next round and the held-out scores of its own model would differ.
    cfg = tiny_config(setup, rounds=3, **{"method.name": "fedsa-lora", "federation.client_holdout": 1})
    train_federation(cfg, tmp_path / "engine")
    flower_simulate(cfg, tmp_path / "flower", timeout_s=400, log=lambda _: None)
    flower, engine = read_metrics(tmp_path / "flower"), read_metrics(tmp_path / "engine")
    assert [m.clients for m in flower] == [m.clients for m in engine]
    trained = [k for m in engine[1:] for k in m.clients]
    assert len(trained) > len(set(trained))  # some client trains twice, from the B it kept
    for f, e in zip(flower, engine):
        assert (f.client_loss, f.heldout_accuracy) == pytest.approx((e.client_loss, e.heldout_accuracy), abs=1e-6)
        assert f.heldout_loss == pytest.approx(e.heldout_loss, abs=1e-6), f.round


def wait_killing_node_two_after_round_one(fl: LocalFederation, run_id: int, out: Path):
    """(the run's final status, whether supernode2 was killed once round 1 was on disk)."""
    killed = {}

    def kill_after_round_one():
        if not killed and (out / "metrics.jsonl").is_file() and read_metrics(out):
            fl.procs.kill("supernode2")
            killed["at"] = time.monotonic()

    return fl.wait_run(run_id, timeout_s=500, on_poll=kill_after_round_one), bool(killed)


def _submit(fl: LocalFederation, cfg, out: Path, **settings) -> int:
    s = FlowerSettings(engine="flower-deployment", out_dir=str(out), **settings)
    return fl.submit(write_app(fl.workdir / "app"), to_run_config(cfg, s))


def test_deployment_three_supernodes_end_to_end(setup, tmp_path):
    cfg = tiny_config(setup, **{"method.name": "subspace"})
    train_federation(cfg, tmp_path / "engine")
    fl = LocalFederation(tmp_path / "work", nodes=3)
    with fl:
        assert len({fl.port, *[p.pid for p in fl.procs.procs.values()]}) == 5  # 1 link + 3 nodes, distinct
        run_id = _submit(fl, cfg, tmp_path / "flower")
        status = fl.wait_run(run_id, timeout_s=400)
        assert status.completed, (status.status, status.details)
        listed = fl.flwr_json("ls", "fedlora")["runs"]  # the status as Flower reports it
        assert [r["status"] for r in listed if int(r["run-id"]) == run_id] == ["finished:completed"]
    assert_all_stopped(fl)
    summary = json.loads((tmp_path / "flower" / "summary.json").read_text())
    assert summary["engine"] == "flower-deployment" and sorted(summary["nodes"]) == ["0", "1", "2"]
    assert_same_run(read_metrics(tmp_path / "flower"), read_metrics(tmp_path / "engine"), tol=1e-6)
    for name in ("adapter_best/adapter_model.safetensors", "adapter_final/adapter_config.json", "plots"):
        assert (tmp_path / "flower" / name).exists(), name


def test_tls_auth_refuses_strangers_and_survives_a_killed_supernode(setup, tmp_path):
    from fedlora.flower.certs import make_node_keys

    cfg = tiny_config(setup, **{"method.name": "fedsvd", "federation.fraction": 1.0})
    train_federation(cfg, tmp_path / "engine")
    assert sample_clients(cfg.seed, 2, 3, 1.0) == [0, 1, 2]
    out = tmp_path / "flower"
    fl = LocalFederation(tmp_path / "work", nodes=3, tls=True, auth=True)
    with fl:
        # a SuperNode whose key was never registered, and one without any key, are refused
        stranger = fl.start_supernode(0, name="stranger", keys=make_node_keys(fl.workdir / "keys", "stranger"),
                                      extra=["--max-retries", "1"])
        keyless = fl.procs.start("keyless", fl.supernode_command(1, None) + ["--max-retries", "1"])
        run_id = _submit(fl, cfg, out, min_replies=2, round_timeout_s=75.0)
        status, killed = wait_killing_node_two_after_round_one(fl, run_id, out)
        assert status.completed, (status.status, status.details)
        for proc in (stranger, keyless):
            assert proc.popen.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in stranger.log_path.read_text()
        assert "must be registered" in keyless.log_path.read_text()
        nodes = fl.flwr_json("supernode", "ls", "fedlora")["nodes"]
        assert len(nodes) == 3  # only the registered ones ever joined
    assert_all_stopped(fl)
    assert killed, "round 1 never finished"
    first, second = read_metrics(out)
    assert_same_run([first], read_metrics(tmp_path / "engine")[:1], tol=1e-6)
    assert first.failed_clients == [] and second.failed_clients == [2]
    assert second.clients == [0, 1] and sum(second.weights) == pytest.approx(1.0, abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients_ever_failed"] == [2] and summary["rounds"] == 2


def test_secure_aggregation_across_three_supernodes_survives_a_killed_one(setup, tmp_path):
    # SecAgg+ between real processes: round 1 sums all three clients' masked updates; node 2 is
    # killed before round 2, which the protocol survives with the other two (threshold 2 of 3).
    cfg = tiny_config(setup, **{"method.name": "fedavg", "federation.fraction": 1.0})
    train_federation(cfg, tmp_path / "engine")
    out = tmp_path / "flower"
    fl = LocalFederation(tmp_path / "work", nodes=3)
    with fl:
        run_id = _submit(fl, cfg, out, min_replies=2, round_timeout_s=40.0, secure_aggregation=True,
                         secagg_clipping_range=0.5)
        status, killed = wait_killing_node_two_after_round_one(fl, run_id, out)
        assert status.completed, (status.status, status.details)
    assert_all_stopped(fl)
    assert killed, "round 1 never finished"
    (first, second), plain = read_metrics(out), read_metrics(tmp_path / "engine")[0]
    assert first.round == plain.round == 1
    assert first.clients == plain.clients == [0, 1, 2] and first.weights == plain.weights
    assert first.client_loss == plain.client_loss  # the same start: the same local training
    # the securely summed global scores as the plain one, up to the quantization of the sum
    assert (first.accuracy, first.loss) == pytest.approx((plain.accuracy, plain.loss), abs=1e-4)
    assert first.geometry is None and first.bytes_up is None
    assert second.failed_clients == [2] and second.clients == [0, 1]
    assert "dropped out of the SecAgg+ round" in second.failure_reasons["2"]
