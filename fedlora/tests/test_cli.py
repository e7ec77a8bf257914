"""The command line: run, sweep, report, resume and their errors."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_encoder, make_tokenizer, shared_file
from fedlora.cli import app
from fedlora.summary import RESULT_COLUMNS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
    shared_file("hellaswag/hellaswag_train_3368.jsonl")
    folder = tmp_path_factory.mktemp("tiny-cli-model")
    tokenizer = make_tokenizer()
    make_encoder(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ["--set", f"model.name={folder}", "--set", "lora.r=4", "--set", "data.max_length=40",
            "--set", "rounds=1", "--set", "data.train_size=120", "--set", "data.eval_size=12"]


def test_run_prints_summary_and_writes_folder(tiny_args, tmp_path):
    result = runner.invoke(app, ["run", str(CONFIGS / "tiny.yaml"), *tiny_args, "--out", str(tmp_path / "r"),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert f"best acc {summary['best_accuracy']:.4f}" in result.output


def test_sweep_and_report(tiny_args, tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), *tiny_args, "--methods", "fedavg,subspace",
                                 "--seeds", "1-2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == RESULT_COLUMNS
    assert sorted((r["method"], r["seed"]) for r in rows) == [("fedavg", "1"), ("fedavg", "2"),
                                                            ("subspace", "1"), ("subspace", "2")]
    for row in rows:  # every number in the csv is the run's own summary
        summary = json.loads((out / row["run_dir"] / "summary.json").read_text())
        assert float(row["best_accuracy"]) == summary["best_accuracy"]
        assert float(row["basis_overlap_code"]) == summary["basis_overlap_code"]
    table = (out / "table.md").read_text()
    assert "ddof=0" in table and "ddof=1" in table and "| Subspace-Reg | 2 |" in table
    assert (out / "plots").is_dir() and list((out / "plots").glob("compare_*_accuracy.png"))
    # A second sweep skips complete runs; report rebuilds the same table.
    again = runner.invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and table.strip() in again.output


def test_method_variants_run_in_their_own_folders_and_rows(tiny_args, tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), *tiny_args, "--methods",
                                 "subspace,subspace:mu=0.5:a_b=0", "--seeds", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(out / "results.csv") as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"subspace", "subspace:mu=0.5:a_b=0.0"}
    assert (rows["subspace"]["mu"], rows["subspace"]["a_b"]) == ("0.05", "0.01")
    assert (rows["subspace:mu=0.5:a_b=0.0"]["mu"], rows["subspace:mu=0.5:a_b=0.0"]["a_b"]) == ("0.5", "0.0")
    assert rows["subspace"]["run_dir"] != rows["subspace:mu=0.5:a_b=0.0"]["run_dir"]
    summary = json.loads((out / rows["subspace:mu=0.5:a_b=0.0"]["run_dir"] / "summary.json").read_text())
    assert summary["method_spec"]["mu"] == 0.5 and summary["method_spec"]["server"] == "orthogonal_b"
    assert "Subspace-Reg (mu=0.5, a_b=0.0)" in (out / "table.md").read_text()


def test_sweep_settings_need_suit_only_the_listed_methods(tiny_args, tmp_path):
    """tiny.yaml runs subspace, which takes no client ranks; a sweep of methods that do takes them,
    and a listed method that does not is refused by name before any run."""
    ranks = ["--set", "federation.client_ranks={choices: [2, 4], seed: 0}"]
    refused = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), *tiny_args, *ranks, "--methods",
                                  "flexlora,fedavg", "--seeds", "1", "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "method 'fedavg' does not define heterogeneous client ranks" \
        in one_error_line(refused)
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), *tiny_args, *ranks, "--methods",
                                 "flexlora,hetlora", "--seeds", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(out / "results.csv") as fh:
        assert sorted(r["method"] for r in csv.DictReader(fh)) == ["flexlora", "hetlora"]


@pytest.mark.parametrize(("variant", "named"), [("subspace:mu", "expected switch=value"),
                                                ("subspace:bogus=1", "bogus"),
                                                ("subspace:mu=-1", "mu")])
def test_bad_method_variant_is_refused_before_any_run(tiny_args, tmp_path, variant, named):
    result = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), *tiny_args, "--methods", f"fedavg,{variant}",
                                 "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and named in one_error_line(result)
    assert not (tmp_path / "s").exists()


def test_methods_lists_the_registry():
    from fedlora.methods import METHODS

    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)
    assert "server=average" in lines[list(METHODS).index("rolora")] and "trains=B/A" in result.output
    assert runner.invoke(app, ["methods", "--names"]).output.strip() == ",".join(METHODS)


def test_unknown_method_is_refused(tiny_args, tmp_path):
    result = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), *tiny_args, "--methods", "fedavg,fedprox",
                                 "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "fedprox" in result.output
    assert not (tmp_path / "s").exists()


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "tiny.yaml").read_text() + "\noptimizer: sgd\n")
    result = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "optimizer: unknown key" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(config):
    from fedlora.config import load_config

    cfg = load_config(config)
    assert cfg.method.name in {"fedavg", "svd", "fedsvd", "subspace"}


# --------------------------------------------------------------------------- user errors
def one_error_line(result) -> str:
    """The run failed as a user error: exit code 2, exactly one `error:` line, no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_tracebacks_never_show_local_variables():
    from fedlora.flower.cli import flower_app

    assert app.pretty_exceptions_show_locals is False and flower_app.pretty_exceptions_show_locals is False


@pytest.mark.parametrize("override, expected", [
    ("model.name=/no/such/model-folder", r"model.name: local model folder /no/such/model-folder not found"),
    ("model.name=someorg/no-such-model", r"'someorg/no-such-model' is not a local folder .*HF_HUB_OFFLINE is set"),
    ("device=cuda", r"device='cuda' but CUDA is not available"),
    ("method.name=fedprox", r"method.name: .*unknown method 'fedprox'"),
])
def test_bad_model_device_or_method_is_one_line(tiny_args, tmp_path, monkeypatch, override, expected):
    import torch
    from huggingface_hub import constants

    if override.startswith("device") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as `make test` runs: no hub at all
    result = runner.invoke(app, ["run", str(CONFIGS / "tiny.yaml"), *tiny_args, "--set", override,
                                 "--out", str(tmp_path / "r"), "--no-progress"])
    assert re.search(expected, one_error_line(result))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_is_or_lies_under_a_file(tiny_args, tmp_path, where):
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "run"
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["run", str(CONFIGS / "tiny.yaml"), *tiny_args, "--out", str(out),
                                     "--no-progress", *extra])
        assert re.search(r"run folder .*taken.* (is a file|lies under)", one_error_line(result))
    assert (tmp_path / "taken").read_text() == "not a folder"


@pytest.mark.parametrize("seeds", ["abc", "42,x", "44-42", ","])
def test_bad_seeds_are_named(tmp_path, seeds):
    result = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), "--seeds", seeds, "--out", str(tmp_path / "s")])
    assert one_error_line(result).startswith("error: --seeds: ")
    assert not (tmp_path / "s").exists()


def test_truncated_checkpoint_on_resume_is_one_line(tiny_args, tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, ["run", str(CONFIGS / "tiny.yaml"), *tiny_args, "--set", "rounds=2",
                                 "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    (out / "summary.json").unlink()  # as if interrupted before the end
    tensors = out / "checkpoint" / "global.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    result = runner.invoke(app, ["resume", str(out), "--no-progress"])
    assert "global.safetensors is damaged" in one_error_line(result)


def test_busy_run_and_sweep_folders_name_the_holder(tiny_args, tmp_path):
    from test_engine import hold_lock

    run = tmp_path / "run"
    result = runner.invoke(app, ["run", str(CONFIGS / "tiny.yaml"), *tiny_args, "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    (run / "summary.json").unlink()
    sweep_dir = tmp_path / "sweep"
    holders = [hold_lock(run), hold_lock(sweep_dir)]
    try:
        resumed = runner.invoke(app, ["resume", str(run), "--no-progress"])
        assert f"is in use by process {holders[0].pid}" in one_error_line(resumed)
        swept = runner.invoke(app, ["sweep", str(CONFIGS / "tiny.yaml"), *tiny_args, "--methods", "fedavg",
                                    "--seeds", "1", "--out", str(sweep_dir), "--no-progress"])
        assert f"sweep folder {sweep_dir} is in use by process {holders[1].pid}" in one_error_line(swept)
        assert [p.name for p in sweep_dir.iterdir()] == [".lock"]  # the refused sweep wrote nothing
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_secure_aggregation_that_cannot_serve_the_method_fails_before_any_process(tiny_args, tmp_path):
    result = runner.invoke(app, ["flower", "deploy", str(CONFIGS / "tiny.yaml"), *tiny_args, "--set",
                                 "method.name=hetlora", "--secure-aggregation", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "secure aggregation: method 'hetlora'" in result.output
    assert not (tmp_path / "r").exists()
