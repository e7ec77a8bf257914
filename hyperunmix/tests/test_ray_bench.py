"""`hyperunmix bench --ray`: the grid as Ray tasks on a local cluster (loopback) gives the same
results as the sequential benchmark, resumes, and respects the benchmark folder's lock."""
from __future__ import annotations

import csv
import os

import pytest
import scipy.io

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray  # noqa: E402  (the extra hyperunmix[ray], which `make` installs)

from hyperunmix.bench import BenchConfig, run_bench  # noqa: E402
from hyperunmix.locks import FolderInUseError, folder_lock  # noqa: E402

CONFIG = BenchConfig(datasets=["synthetic"], methods=["vca-fcls", "nfindr-fcls", "kmeans-fcls"], seeds=[0, 1],
                     figures="none")
TIMES = ("fit_time_s", "wall_time_s")


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows_without_times(path):
    with open(path) as handle:
        return [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(handle)]


def test_ray_bench_equals_sequential_and_resumes(tmp_path, local_cluster):
    sequential, _ = run_bench(CONFIG, tmp_path / "seq")
    seen = []
    distributed, _ = run_bench(CONFIG, tmp_path / "ray", on_progress=seen.append, ray_address="auto")
    assert ray.is_initialized()  # a cluster the caller started is left running
    assert len(seen) == 6 and all(r["status"] == "ok" for r in distributed)
    assert rows_without_times(tmp_path / "seq" / "results.csv") == rows_without_times(tmp_path / "ray" / "results.csv")
    for method in CONFIG.methods:
        for seed in CONFIG.seeds:
            a, b = (scipy.io.loadmat(tmp_path / kind / "runs" / "synthetic" / method / f"seed{seed}" / "estimates.mat")
                    for kind in ("seq", "ray"))
            assert (a["E"] == b["E"]).all() and (a["A"] == b["A"]).all()  # same computations, same numbers
    # Resume: every run folder is kept, so the fit times are those of the first attempt.
    again, _ = run_bench(CONFIG, tmp_path / "ray", ray_address="auto")
    assert [r["fit_time_s"] for r in again] == [r["fit_time_s"] for r in distributed]
    assert [r["fit_time_s"] for r in sequential] != [r["fit_time_s"] for r in distributed]  # times are measured


def test_ray_bench_respects_the_folder_lock(tmp_path, local_cluster):
    with folder_lock(tmp_path / "busy"):
        with pytest.raises(FolderInUseError, match="in use by another hyperunmix process"):
            run_bench(CONFIG, tmp_path / "busy", ray_address="auto")
