"""`hyperunmix bench --ray`: the grid as Ray tasks on a local cluster (loopback) gives the same
results as the sequential benchmark, resumes, and respects the benchmark folder's lock; a scene
unmixed in row blocks (locally or as Ray tasks) equals the whole-scene `transform`."""
from __future__ import annotations

import csv
import os

import numpy as np
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


# GAUSS reads a 5 x 5 neighbourhood here (radius 2), CNNAEU a 3 x 3 one, VCA-FCLSU the pixel alone.
ROW_BLOCK_METHODS = {
    "gauss-blind": dict(window=5, an_epochs=2, un_epochs=2, mn_epochs=2, stage2_epochs=2, batch_size=64),
    "cnnaeu": dict(epochs=2, patch_size=8, patches_per_epoch=4, batch_size=2, decoder_kernel=3),
    "vca-fcls": {},
}


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    from hyperunmix.synthetic import make_synthetic

    scene = make_synthetic(H=23, W=9, p=3, n_bands=16, seed=5)
    path = tmp_path_factory.mktemp("scene") / "scene.npy"
    np.save(path, scene.cube.astype(np.float32))
    return path


@pytest.mark.parametrize("name", ROW_BLOCK_METHODS)
def test_row_blocks_with_their_neighbourhood_equal_the_whole_scene(name, scene_file):
    from hyperunmix import make_method
    from hyperunmix.distributed import row_blocks, transform_rows

    cube = np.load(scene_file)
    model = make_method(name, 3, random_state=0, **ROW_BLOCK_METHODS[name]).fit(cube)
    whole = model.transform(cube)
    # Blocks of 4 rows (the last one 3): block edges fall inside the image, where a block without
    # its neighbourhood rows would reflect at the wrong place.
    pieces = np.concatenate([transform_rows(model, cube, a, b) for a, b in row_blocks(cube.shape[0], 4)], axis=1)
    # 1e-6: a block goes through the networks' matrix products in batches of other sizes than the
    # whole scene, which changes float32 rounding; a missing neighbourhood row changes ~1e-2.
    np.testing.assert_allclose(pieces, whole, atol=1e-6)
    if model.neighbourhood_radius:
        cut = np.concatenate([model.transform(cube[a:b]) for a, b in row_blocks(cube.shape[0], 4)], axis=1)
        assert np.abs(cut - whole).max() > 1e-4, "the test should tell a block without its neighbourhood"


def test_ray_transform_in_row_blocks_equals_the_whole_scene(scene_file, local_cluster):
    from hyperunmix import make_method
    from hyperunmix.distributed import transform_on_ray

    cube = np.load(scene_file)
    model = make_method("gauss-blind", 3, random_state=0, **ROW_BLOCK_METHODS["gauss-blind"]).fit(cube)
    distributed = transform_on_ray(model, scene_file, address="auto", rows_per_task=5)
    np.testing.assert_allclose(distributed, model.transform(cube), atol=1e-6)  # as in the test above
