"""Speed benchmark -> benchmarks/results/bench_speed.{json,md}.

1. FCLSU on the whole of Jasper Ridge: batched solver vs a per-pixel scipy NNLS loop
   (alternating, median of several repeats, ratio).
2. GAUSS, all stages (stage 1 + blind, stage 1 + prime) on Samson: fit time.
3. Tiled GAUSS inference on a 1000 x 1000 x 200 synthetic cube: time and peak memory
   (measured in a child process so the peak belongs to that step alone).
4. Every method's fit time per dataset (seed 0).

Usage: python hyperunmix/benchmarks/bench_speed.py [--threads 2] [--skip-methods] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from hyperunmix import METHODS, make_method  # noqa: E402
from hyperunmix.datasets import load_dataset  # noqa: E402
from hyperunmix.fcls import fcls, fcls_per_pixel  # noqa: E402
from hyperunmix.files import atomic_write  # noqa: E402
from hyperunmix.run import method_params  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_fcls(repeats: int) -> dict:
    scene = load_dataset("jasper-ridge")
    batched, looped = [], []
    for _ in range(repeats):  # alternate so background load hits both alike
        batched.append(timed(lambda: fcls(scene.Y, scene.E)))
        looped.append(timed(lambda: fcls_per_pixel(scene.Y, scene.E)))
    gap = float(np.abs(fcls(scene.Y, scene.E) - fcls_per_pixel(scene.Y, scene.E)).max())
    return {"scene": "jasper-ridge 100x100x198, p=4", "batched_s_median": statistics.median(batched),
            "per_pixel_nnls_s_median": statistics.median(looped),
            "speedup": statistics.median(looped) / statistics.median(batched), "max_abs_difference": gap,
            "repeats": repeats}


def bench_gauss_stages() -> dict:
    scene = load_dataset("samson")
    out = {}
    for name in ("gauss", "gauss-blind", "gauss-prime"):
        model = make_method(name, scene.p, random_state=0).fit(scene.cube)
        out[name] = {"fit_s": model.fit_time_}
    return out


def tiled_inference_child(queue, threads: int, size: int, bands: int) -> None:
    import torch

    torch.set_num_threads(threads)
    train = np.random.default_rng(0).uniform(0.0, 1.0, (24, 24, bands))
    model = make_method("gauss", 4, random_state=0).fit(train)  # inference cost does not depend on training
    cube = np.random.default_rng(1).random((size, size, bands), dtype=np.float32)  # no float64 transient
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    A = model.transform(cube)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put({"shape": [size, size, bands], "seconds": seconds, "peak_rss_gib": peak / 2**20,
               "rss_before_inference_gib": before / 2**20, "cube_gib": cube.nbytes / 2**30,
               "output_shape": list(A.shape)})


def bench_tiled(threads: int, size: int = 1000, bands: int = 200) -> dict:
    queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=tiled_inference_child, args=(queue, threads, size, bands))
    child.start()
    child.join()
    if child.exitcode != 0:
        return {"error": f"child process exited with code {child.exitcode}"}
    return queue.get()


# MiSiCNet's default budget (8000 iterations) takes hours on a CPU: it is timed on a slice of it and
# reported as the time of that slice (the cost per iteration does not change over the run).
SLICED_BUDGETS = {"misicnet": {"iterations": 200}}


def bench_methods(datasets: list[str]) -> dict:
    out: dict = {}
    for dataset in datasets:
        scene = load_dataset(dataset)
        for name in METHODS:
            try:
                params = method_params(scene, name, SLICED_BUDGETS.get(name, {}))
                model = make_method(name, scene.p, random_state=0, **params)
                out.setdefault(dataset, {})[name] = model.fit(scene.cube).fit_time_
            except Exception as err:  # report, keep measuring the rest
                out.setdefault(dataset, {})[name] = f"failed: {type(err).__name__}: {err}"
    return out


def markdown(report: dict) -> str:
    f = report["fcls"]
    lines = [f"# Speed ({report['machine']}, {report['threads']} thread(s), OMP_WAIT_POLICY=PASSIVE)", "",
             "## FCLSU on Jasper Ridge (medians)", "",
             "| batched (s) | per-pixel scipy NNLS (s) | speed-up | max abs difference |", "|---|---|---|---|",
             f"| {f['batched_s_median']:.4f} | {f['per_pixel_nnls_s_median']:.3f} | {f['speedup']:.1f}x | "
             f"{f['max_abs_difference']:.1e} |", ""]
    if "gauss" in report:
        lines += ["## GAUSS stages on Samson (fit, s)", "", "| method | fit (s) |", "|---|---|"]
        lines += [f"| {k} | {v['fit_s']:.1f} |" for k, v in report["gauss"].items()] + [""]
    if "tiled" in report:
        t = report["tiled"]
        lines += ["## Tiled GAUSS inference", ""]
        lines += [f"error: {t['error']}", ""] if "error" in t else [
            "| cube | time (s) | peak RSS (GiB) | cube itself (GiB) |", "|---|---|---|---|",
            f"| {' x '.join(map(str, t['shape']))} | {t['seconds']:.1f} | {t['peak_rss_gib']:.2f} | "
            f"{t['cube_gib']:.2f} |", ""]
    if "methods" in report:
        lines += ["## Fit time per method (seed 0, s)", ""]
        datasets = list(report["methods"])
        lines += ["| method | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
        for name in METHODS:
            cells = [report["methods"][d].get(name) for d in datasets]
            text = [f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells]
            lines.append(f"| {name} | " + " | ".join(text) + " |")
        lines += [""] + [f"{name}: timed with {params} (a slice of its default budget)"
                         for name, params in SLICED_BUDGETS.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-gauss", action="store_true")
    parser.add_argument("--skip-tiled", action="store_true")
    parser.add_argument("--skip-methods", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "threads": args.threads, "load_average_at_start": os.getloadavg()[0]}
    report["fcls"] = bench_fcls(args.repeats)
    if not args.skip_gauss:
        report["gauss"] = bench_gauss_stages()
    if not args.skip_tiled:
        report["tiled"] = bench_tiled(args.threads)
    if not args.skip_methods:
        report["methods"] = bench_methods(["samson", "jasper-ridge"])
    atomic_write(args.out / "bench_speed.json", lambda h: json.dump(report, h, indent=2), mode="w")
    atomic_write(args.out / "bench_speed.md", lambda h: h.write(markdown(report)), mode="w")
    print(markdown(report))


if __name__ == "__main__":
    main()
