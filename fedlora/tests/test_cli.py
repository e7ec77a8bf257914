"""The command line: run, sweep, report, resume and their errors."""
from __future__ import annotations

import csv
import json
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
