"""A benchmark's runs as Ray tasks, on this machine or on a cluster (`hyperunmix bench --ray`).

Each task is one (dataset, method, seed) run: `bench.run_one` in a Ray worker, which writes its
own run folder (locked, resumed, written atomically exactly as in a sequential benchmark) and
returns its row; the driver keeps the benchmark folder's lock and writes results.csv and the
summary. The runs are the same computations as in a sequential benchmark, so the results are
the same. On a cluster of several machines the output folder must be on a file system every
node mounts at the same path. Ray is an optional extra: `pip install "hyperunmix[ray]"`.

`transform_on_ray` unmixes a large scene file with a fitted model in blocks of image rows, one
Ray task per block: each task opens the file itself (memory-mapped where the format allows, so a
node reads only its rows) and unmixes its rows plus `model.neighbourhood_radius` rows on each
side, which it then cuts off, so every pixel sees the same neighbourhood as in a whole-scene
`transform`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def connect(address: str):
    """Ray, connected to `address`: "auto" joins the cluster this machine runs (`RAY_ADDRESS`, or a
    `ray start` on this machine) or starts a local one; anything else is a cluster address
    (`host:6379`, `ray://host:10001`). Returns (ray module, whether this call started Ray)."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray, an optional extra: pip install 'hyperunmix[ray]'") from None
    if ray.is_initialized():
        return ray, False
    try:
        ray.init(address=None if address == "auto" else address, log_to_driver=False)
    except ConnectionError as err:
        raise ValueError(f"cannot reach a Ray cluster at {address!r}: {err}") from None
    return ray, True


def run_on_ray(jobs: list[tuple], out: Path, resume: bool, address: str,
               on_progress: Callable[[str], None] | None = None) -> list[dict]:
    """Rows of `bench.run_one(*job, out, resume)` for every job, computed as Ray tasks, in job order."""
    from hyperunmix.bench import run_one

    ray, started = connect(address)
    try:
        task = ray.remote(num_cpus=1)(run_one)
        scenes = {}  # one copy of each scene in the object store, shared by its runs
        refs = []
        for scene, method, seed, params, figures in jobs:
            if scene.name not in scenes:
                scenes[scene.name] = ray.put(scene)
            refs.append(task.remote(scenes[scene.name], method, seed, params, figures, out, resume))
        labels = {ref: f"{job[0].name} / {job[1]} / seed {job[2]}" for ref, job in zip(refs, jobs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            if on_progress:
                on_progress(labels[done[0]])
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()


def row_blocks(height: int, rows_per_task: int) -> list[tuple[int, int]]:
    """[(first_row, end_row), ...] covering the image."""
    if rows_per_task < 1:
        raise ValueError(f"rows_per_task must be at least 1, got {rows_per_task}")
    return [(start, min(height, start + rows_per_task)) for start in range(0, height, rows_per_task)]


def transform_rows(model, cube, first: int, end: int) -> np.ndarray:
    """Abundances (p, end - first, W) of image rows [first, end) of `cube` by a fitted `model`."""
    radius = model.neighbourhood_radius
    top, bottom = max(0, first - radius), min(cube.shape[0], end + radius)
    return model.transform(cube[top:bottom])[:, first - top:end - top]


def transform_on_ray(model, path: str | Path, address: str = "auto", rows_per_task: int = 256,
                     **load_options) -> np.ndarray:
    """Abundances (p, H, W) of the scene file `path` by the fitted `model`, in blocks of
    `rows_per_task` image rows computed as Ray tasks (see the module's docstring). `load_options`
    go to `load_scene` (e.g. `drop_bands`) and must select the bands the model was fitted on."""
    from hyperunmix.loaders import load_scene

    def unmix_block(model, first: int, end: int) -> np.ndarray:
        return transform_rows(model, load_scene(path, **load_options).cube, first, end)

    height, width = load_scene(path, **load_options).cube.shape[:2]
    ray, started = connect(address)
    try:
        task = ray.remote(num_cpus=1)(unmix_block)
        shared_model = ray.put(model)
        blocks = row_blocks(height, rows_per_task)
        refs = [task.remote(shared_model, first, end) for first, end in blocks]
        out = np.empty((model.n_endmembers, height, width))
        for (first, end), ref in zip(blocks, refs):
            out[:, first:end] = ray.get(ref)
        return out
    finally:
        if started:
            ray.shutdown()
