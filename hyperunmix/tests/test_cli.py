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
    for name in ("bench.yaml", "bench_baselines.yaml", "bench_urban.yaml", "bench_strong.yaml"):
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
    assert result.exit_code == 2
    assert message in result.output


# ----------------------------------------------------------------------------- overwrites, bad input, resume


def invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "80"})  # narrow: a wrapped message would show


def single_error_line(result, message: str) -> None:
    """Exit code 2, one line `error: ...` holding `message`, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.fixture
def fits(monkeypatch):
    """Count VCA fits."""
    from hyperunmix.methods.vca import VCAFCLS

    calls = []
    original = VCAFCLS._fit
    monkeypatch.setattr(VCAFCLS, "_fit", lambda self, *a: calls.append(1) or original(self, *a))
    return calls


def test_run_refuses_to_replace_a_finished_run_before_fitting(tmp_path, fits):
    out = str(tmp_path / "run")
    assert invoke("run", "--dataset", "synthetic", "--method", "vca-fcls", "--out", out, "--no-figures").exit_code == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    result = invoke("run", "--dataset", "synthetic", "--method", "vca-fcls", "--seed", "1", "--out", out)
    single_error_line(result, "already holds a run (metrics.json, config.yaml); pass --overwrite")
    assert len(fits) == 1 and {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    result = invoke("run", "--dataset", "synthetic", "--method", "vca-fcls", "--seed", "1", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["seed"] == 1


def test_overwrite_removes_figures_of_the_replaced_run(tmp_path):
    scene = load_dataset("synthetic")
    run_method(scene, "vca-fcls", 0, out_dir=tmp_path)
    (tmp_path / "training_curves.png").write_bytes(b"from another method")
    run_method(scene, "vca-fcls", 1, out_dir=tmp_path, figures=False, overwrite=True)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("where, message", [("notes.txt", "notes.txt is a file, not a folder"),
                                            ("notes.txt/run", "lies under")])
def test_out_that_is_a_file_refused_before_fitting(tmp_path, fits, where, message):
    (tmp_path / "notes.txt").write_text("keep me")
    result = invoke("run", "--dataset", "synthetic", "--method", "vca-fcls", "--out", str(tmp_path / where))
    single_error_line(result, message)
    assert not fits and (tmp_path / "notes.txt").read_text() == "keep me"


def test_show_on_a_cut_short_metrics_file(tmp_path):
    run_method(load_dataset("synthetic"), "vca-fcls", 0, out_dir=tmp_path, figures=False)
    text = (tmp_path / "metrics.json").read_text()
    (tmp_path / "metrics.json").write_text(text[: len(text) // 2])
    single_error_line(invoke("show", str(tmp_path)), "metrics.json cannot be read")


@pytest.mark.parametrize("args, message", [
    (["--set", "epochs=[1,"], "--set 'epochs=[1,': cannot parse the value"),
    (["--method", "autoencoder", "--set", "epochs=-2"], "The 'epochs' parameter of Autoencoder must be an int"),
    (["--set", "use_projected=maybe"], "The 'use_projected' parameter of VCAFCLS must be an instance of 'bool'"),
    (["--set", "n_endmembers=3.5"], "n_endmembers cannot be set as a method parameter"),
    (["--seed", "x"], "Invalid value for '--seed'"),
])
def test_bad_values_refused_with_exit_code_2_and_nothing_written(tmp_path, fits, args, message):
    out = tmp_path / "run"
    result = invoke("run", "--dataset", "synthetic", "--method", "vca-fcls", "--out", str(out), *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not fits and not out.exists()


def test_malformed_yaml_config(tmp_path):
    (tmp_path / "run.yaml").write_text("dataset: [synthetic\nmethod: vca-fcls\n")
    single_error_line(invoke("run", "--config", str(tmp_path / "run.yaml")), "run.yaml is not valid YAML")
    (tmp_path / "bench.yaml").write_text("seeds: 0-1\nmethods: {vca-fcls\n")
    single_error_line(invoke("bench", "--config", str(tmp_path / "bench.yaml"), "--out", str(tmp_path / "b")),
                      "bench.yaml is not valid YAML")


def test_tracebacks_never_show_local_variables():
    assert app.pretty_exceptions_show_locals is False


def write_subimage(folder: Path, seed: int) -> None:
    """A small scene without ground truth where the registry expects the Urban sub-image."""
    rng = np.random.default_rng(seed)
    cube = np.einsum("hwp,lp->hwl", rng.dirichlet(np.ones(4), size=(9, 13)), rng.uniform(0.1, 0.9, (20, 4)))
    (folder / "hsi").mkdir(exist_ok=True)
    scipy.io.savemat(folder / "hsi" / "urban_subimage_R162_noGT.mat", {"im": cube})


def test_bench_resume_refits_when_the_scene_file_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERUNMIX_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    write_subimage(tmp_path / "data", seed=0)
    config = BenchConfig(datasets=["urban-subimage"], methods=["vca-fcls"], seeds=[0], figures="none")
    run_bench(config, tmp_path / "bench")
    run_dir = tmp_path / "bench" / "runs" / "urban-subimage" / "vca-fcls" / "seed0"
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())["scene"]["fingerprint"]
    assert stored["shape"] == [9, 13, 20] and len(stored["sha256"]) == 64
    marked = {**json.loads((run_dir / "metrics.json").read_text()), "fit_time_s": 123.0}
    (run_dir / "metrics.json").write_text(json.dumps(marked))
    assert run_bench(config, tmp_path / "bench")[0][0]["fit_time_s"] == 123.0  # same file: kept
    write_subimage(tmp_path / "data", seed=1)  # same shape, other values
    rows, _ = run_bench(config, tmp_path / "bench")
    assert rows[0]["fit_time_s"] != 123.0
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["scene"]["fingerprint"] != stored


def test_errors_log_describes_only_the_latest_attempt(tmp_path):
    failing = BenchConfig(datasets=["synthetic"], methods=["vca-fcls"], seeds=[0], figures="none",
                          params={"vca-fcls": {"use_projected": "maybe"}})
    run_bench(failing, tmp_path)
    assert "use_projected" in (tmp_path / "errors.log").read_text()
    rows, _ = run_bench(failing.model_copy(update={"params": {}}), tmp_path)
    assert rows[0]["status"] == "ok" and not (tmp_path / "errors.log").exists()
