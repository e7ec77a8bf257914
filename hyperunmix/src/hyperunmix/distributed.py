"""A benchmark's runs as Ray tasks, on this machine or on a cluster (`hyperunmix bench --ray`).

Each task is one (dataset, method, seed) run: `bench.run_one` in a Ray worker, which writes its
own run folder (locked, resumed, written atomically exactly as in a sequential benchmark) and
returns its row; the driver keeps the benchmark folder's lock and writes results.csv and the
summary. The runs are the same computations as in a sequential benchmark, so the results are
the same. On a cluster of several machines the output folder must be on a file system every
node mounts at the same path. Ray is an optional extra: `pip install "hyperunmix[ray]"`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


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
