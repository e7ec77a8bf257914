"""CLI, run directories and the benchmark table, on the fast signal-processing methods."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from typer.testing import CliRunner

from hyperunmix.bench import BenchConfig, markdown_table, parse_seeds, run_bench, summarise
from hyperunmix.cli import app
from hyperunmix.datasets import load_dataset
from hyperunmix.demo import DEMO_CONFIG
from hyperunmix.run import redraw_figures, run_method

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_run_writes_estimates_metrics_config_and_figures(tmp_path):
    scene = load_dataset("synthetic")
    metrics = run_method(scene, "vca-fcls", seed=0, out_dir=tmp_path)
    saved = scipy.io.loadmat(tmp_path / "estimates.mat")
    assert saved["E"].shape == (scene.n_bands, 4) and saved["A"].shape == (4, scene.n_pixels)
    assert int(saved["H"][0, 0]) == scene.H and int(saved["W"][0, 0]) == scene.W
    again = run_method(scene, "vca-fcls", seed=0)
    assert json.loads((tmp_path / "metrics.json").read_text())["armse"] == pytest.approx(again["armse"], abs=0)
    assert metrics["mean_sad_deg"] < 1.5
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["method"] == "vca-fcls" and config["params"]["random_state"] == 0
    assert {"abundances.png", "endmembers.png"} <= {p.name for p in tmp_path.glob("*.png")}


def test_figures_redrawn_from_saved_estimates_match_the_fit(tmp_path):
    scene = load_dataset("synthetic")
    run_method(scene, "vca-fcls", seed=0, out_dir=tmp_path / "drawn")
    run_method(scene, "vca-fcls", seed=0, out_dir=tmp_path / "later", figures=False)
    assert not list((tmp_path / "later").glob("*.png"))
    redraw_figures(tmp_path / "later")
    for name in ("abundances.png", "endmembers.png"):
        assert (tmp_path / "later" / name).read_bytes() == (tmp_path / "drawn" / name).read_bytes()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        redraw_figures(tmp_path)


def test_oracle_run_needs_no_arrays_from_the_user(tmp_path):
    metrics = run_method(load_dataset("synthetic"), "oracle-fcls", seed=0, out_dir=tmp_path)
    assert metrics["mean_sad_deg"] < 1e-5
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["params"]["endmembers"] == "array[120, 4]"


def test_training_curves_written_when_history_present(tmp_path, monkeypatch):
    from hyperunmix.methods.vca import VCAFCLS

    original = VCAFCLS._fit

    def with_history(self, Y, H, W):
        self.history_["loss"] = [1.0, 0.5, 0.25]
        return original(self, Y, H, W)

    monkeypatch.setattr(VCAFCLS, "_fit", with_history)
    run_method(load_dataset("synthetic"), "vca-fcls", 0, out_dir=tmp_path)
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("1,3, 7") == [1, 3, 7]
    with pytest.raises(ValueError, match="bad seed list 'a-b'"):
        parse_seeds("a-b")


def test_bench_table_csv_and_failed_runs_recorded(tmp_path):
    config = BenchConfig(datasets=["synthetic"], methods=["vca-fcls", "kmeans-fcls", "oracle-fcls"], seeds="0-1",
                         params={"oracle-fcls": {"bogus": 1}}, figures="none")
    rows, summary = run_bench(config, tmp_path)
    with open(tmp_path / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6
    assert [r["status"] for r in table].count("failed") == 2
    assert "bogus" in (tmp_path / "errors.log").read_text()
    vca = [float(r["mean_sad_deg"]) for r in table if r["method"] == "vca-fcls"]
    entry = next(e for e in summary if e["method"] == "vca-fcls")
    assert entry["mean_sad_deg_mean"] == pytest.approx(np.mean(vca))
    assert entry["mean_sad_deg_std"] == pytest.approx(np.std(vca))
    text = (tmp_path / "summary.md").read_text()
    assert "| synthetic | vca-fcls |" in text and "0 (2 failed)" in text
    assert (tmp_path / "bench_synthetic.png").exists()


def test_bench_resume_keeps_finished_runs_made_with_the_same_settings(tmp_path):
    config = BenchConfig(datasets=["synthetic"], methods=["vca-fcls"], seeds="0-1", figures="none")
    run_bench(config, tmp_path)
    seed0 = tmp_path / "runs" / "synthetic" / "vca-fcls" / "seed0" / "metrics.json"
    marked = {**json.loads(seed0.read_text()), "fit_time_s": 123.0}
    seed0.write_text(json.dumps(marked))
    (tmp_path / "runs" / "synthetic" / "vca-fcls" / "seed1" / "metrics.json").unlink()  # an interrupted run

    rows, _ = run_bench(config, tmp_path)
    assert [r["fit_time_s"] == 123.0 for r in rows] == [True, False]
    assert (tmp_path / "runs" / "synthetic" / "vca-fcls" / "seed1" / "metrics.json").is_file()

    other = config.model_copy(update={"params": {"vca-fcls": {"use_projected": False}}})
    assert all(r["fit_time_s"] != 123.0 for r in run_bench(other, tmp_path)[0])  # other parameters: rerun
    run_bench(config, tmp_path)
    seed0.write_text(json.dumps(marked))
    assert all(r["fit_time_s"] != 123.0 for r in run_bench(config, tmp_path, resume=False)[0])

    seed0.write_text(json.dumps(marked))
    rows, _ = run_bench(config.model_copy(update={"figures": "all"}), tmp_path)  # kept, and its figures drawn
    assert rows[0]["fit_time_s"] == 123.0 and (seed0.parent / "abundances.png").is_file()


def test_bench_bars_show_reconstruction_error_on_a_scene_without_ground_truth(tmp_path, monkeypatch):
    from hyperunmix import figures

    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path: drawn.append(fig) or path)
    rows = [{"dataset": "urban-subimage", "method": m, "status": "ok", "reconstruction_rmse": v, "fit_time_s": 1.0}
            for m, v in (("vca-fcls", 0.03), ("nmf", 0.04))]
    figures.bench_bars(summarise(rows), tmp_path / "bars.png", "urban-subimage")
    (ax,) = drawn[0].axes
    assert ax.get_ylabel() == "reconstruction RMSE"
    assert [bar.get_height() for bar in ax.patches] == pytest.approx([0.03, 0.04])


def test_summary_formats_mean_and_std():
    rows = [{"dataset": "d", "method": "m", "status": "ok", "mean_sad_deg": v, "armse": 0.1, "sre_db": 1.0,
             "fit_time_s": 1.0} for v in (1.0, 3.0)]
    assert "| d | m | 2.00 ± 1.00 | 0.100 ± 0.000 |" in markdown_table(summarise(rows))


def test_bench_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown method"):
        BenchConfig(methods=["vca"])
    with pytest.raises(ValueError, match="unknown dataset"):
        BenchConfig(datasets=["indian-pines"])


def test_demo_config_file_matches_the_demo():
    assert BenchConfig(**yaml.safe_load((CONFIGS / "demo.yaml").read_text())) == BenchConfig(**DEMO_CONFIG)
    for name in ("bench.yaml", "bench_baselines.yaml", "bench_urban.yaml"):
        BenchConfig(**yaml.safe_load((CONFIGS / name).read_text()))


def test_cli_run_show_bench_datasets(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--dataset", "synthetic", "--method", "nfindr-fcls", "--seed", "2",
                                 "--set", "max_sweeps=3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["params"]["max_sweeps"] == 3 and config["seed"] == 2
    shown = runner.invoke(app, ["show", str(out)])
    assert shown.exit_code == 0 and "mean_sad_deg" in shown.output
    bench_out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "--datasets", "synthetic", "--methods", "vca-fcls", "--seeds", "0-1",
                                 "--out", str(bench_out), "--figures", "none"])
    assert result.exit_code == 0, result.output
    assert "| synthetic | vca-fcls |" in runner.invoke(app, ["show", str(bench_out)]).output
    listed = runner.invoke(app, ["datasets"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "synthetic-bilinear" in listed.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--dataset", "nope", "--method", "vca-fcls"], "unknown dataset 'nope'"),
        (["run", "--dataset", "synthetic", "--method", "vca-fcls", "--set", "oops"], "key=value"),
        (["bench", "--methods", "vca"], "unknown method"),
        (["show", "."], "not a run directory"),
    ],
)
def test_cli_errors_name_the_problem(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code != 0
    assert message in result.output
