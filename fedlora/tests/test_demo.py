"""The demo's paired zero-shot vs final table, built from fake run folders."""
from __future__ import annotations

import numpy as np
import pytest

from fedlora.rundir import RunDir
from fedlora.summary import paired_rows, paired_table


def scores_for(correct: np.ndarray, labels: np.ndarray, margin: float) -> np.ndarray:
    """Scores (N, 4) that pick the label where `correct`, the next choice elsewhere, by `margin`."""
    scores = np.zeros((len(labels), 4), dtype=np.float32)
    picked = np.where(correct, labels, (labels + 1) % 4)
    scores[np.arange(len(labels)), picked] = margin
    return scores


def fake_run(folder, margin_before: float, margin_after: float) -> None:
    # The worked example of test_stats: 7 items gained, 2 lost, 5 right and 6 wrong both times.
    labels = np.arange(20) % 4
    before = np.array([0] * 7 + [1] * 2 + [1] * 5 + [0] * 6, dtype=bool)
    after = np.array([1] * 7 + [0] * 2 + [1] * 5 + [0] * 6, dtype=bool)
    run = RunDir(folder)
    folder.mkdir()
    run.write_eval_items(0, scores_for(before, labels, margin_before), labels)
    run.write_eval_items(2, np.zeros((20, 4)), labels)  # an intermediate round: not the final one
    run.write_eval_items(3, scores_for(after, labels, margin_after), labels)


def test_paired_table_compares_round_zero_with_the_final_round(tmp_path):
    fake_run(tmp_path / "a", margin_before=0.0, margin_after=1.0)
    rows = paired_rows([("fedavg", tmp_path / "a")])
    (row,) = rows
    assert (row["n"], row["final_round"]) == (20, 3)
    # Margin 0 before: the 4 scores are equal, argmax picks choice 0: right exactly where label == 0
    # (a fresh encoder head), and the loss is ln 4.
    labels = np.arange(20) % 4
    assert row["accuracy"].before == pytest.approx(np.mean(labels == 0))
    assert row["loss"].before == pytest.approx(np.log(4), rel=1e-6)  # float32 scores, float64 loss
    table = paired_table(rows)
    assert "| FedAvg | 20 | 3 |" in table
    assert "exact McNemar" in table and "paired t interval" in table


def test_paired_table_numbers_match_the_worked_example(tmp_path):
    fake_run(tmp_path / "a", margin_before=1.0, margin_after=1.0)
    (row,) = paired_rows([("subspace", tmp_path / "a")])
    # As test_stats: accuracy 7/20 -> 12/20, diff +0.250, interval [-0.090, +0.425], p = 92/512.
    line = paired_table([row]).splitlines()[2]
    assert "| Subspace-Reg | 20 | 3 | 0.350 | 0.600 | +0.250 [-0.090, +0.425] | 0.18 |" in line
    # Loss: margin 1 on the right choice gives -log(e/(e+3)), on a wrong one -log(1/(e+3)).
    right, wrong = -np.log(np.e / (np.e + 3)), -np.log(1 / (np.e + 3))
    assert row["loss"].before == pytest.approx((7 * right + 13 * wrong) / 20, rel=1e-6)
    assert row["loss"].after == pytest.approx((12 * right + 8 * wrong) / 20, rel=1e-6)


def test_a_run_without_zero_shot_items_is_refused(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    RunDir(folder).write_eval_items(1, np.zeros((4, 4)), np.arange(4))
    with pytest.raises(ValueError, match=r"zero-shot round \(eval.zero_shot: true\).*found rounds \[1\]"):
        paired_rows([("fedavg", folder)])


def test_the_demo_config_evaluates_enough_items_against_zero_shot():
    from fedlora import demo
    from fedlora.config import load_config

    cfg = load_config(demo.CONFIG)
    # The paired table needs round 0 and at least 200 eval items.
    assert cfg.eval.zero_shot and cfg.data.eval_size >= 200
    assert cfg.eval.every == cfg.rounds  # only round 0 and the last: evaluation dominates the demo's time


@pytest.mark.parametrize("content", [b"not a zip archive", b"PK\x03\x04 torn"])
def test_a_damaged_per_item_file_is_named(tmp_path, content):
    from fedlora.rundir import RunDirError

    (tmp_path / "eval_items.npz").write_bytes(content)
    with pytest.raises(RunDirError, match=r"per-item eval file .*eval_items\.npz is damaged"):
        RunDir(tmp_path).read_eval_items()
