"""Memory and time on large scenes -> benchmarks/results/bench_memory.{json,md}.

Float32 ENVI cubes of 250^2, 500^2 and 1000^2 pixels x 200 bands are written to a scratch folder
(default: the system's temp folder; the 1000^2 one is 763 MiB) by tiling a synthetic scene, then
every method is fitted and applied (`fit`, then `transform` of the whole scene) on the
memory-mapped file, each in a fresh process whose peak resident memory (`ru_maxrss`) is
reported. Checks:

- flat memory: for every method, the peak on 500^2 is at most 1.3x the peak on 250^2;
- targets on 1000^2 with default settings: gauss-blind fit + transform within 4 GiB and 15 min,
  vca-fcls within 2 min.

The 250^2 / 500^2 grid trains the deep methods with fewer epochs (`--grid-epochs`, default a
tenth): memory does not depend on the number of epochs, only time does. The 1000^2 targets use
the defaults unless `--target-epoch-scale` says otherwise (then the time is extrapolated and
marked as such).

Usage: python hyperunmix/benchmarks/bench_memory.py [--threads 2] [--scratch DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from hyperunmix.files import atomic_write  # noqa: E402

BANDS = 200
SIZES = (250, 500, 1000)
GRID_METHODS = ("vca-fcls", "nfindr-fcls", "kmeans-fcls", "nmf", "gauss", "gauss-blind", "gauss-prime",
                "cnnaeu", "autoencoder")
TARGETS = {"gauss-blind": {"max_gib": 4.0, "max_s": 15 * 60}, "vca-fcls": {"max_gib": 4.0, "max_s": 2 * 60}}
MAX_RATIO = 1.3
EPOCH_KEYS = {"gauss": ("an_epochs", "un_epochs", "mn_epochs", "stage2_epochs"), "cnnaeu": ("epochs",),
              "autoencoder": ("epochs",)}
DEFAULT_EPOCHS = {"an_epochs": 20, "un_epochs": 20, "mn_epochs": 40, "stage2_epochs": 40, "cnnaeu": 320,
                  "autoencoder": 30}


def write_envi(path: Path, size: int, seed: int = 0) -> Path:
    """A size x size x BANDS float32 BIP cube, written a band of rows at a time from one 250 x 250
    synthetic tile (mirrored every other time, so the tiles meet without seams)."""
    from hyperunmix.synthetic import make_synthetic

    header = path.with_suffix(".hdr")
    if header.is_file() and path.is_file() and path.stat().st_size == size * size * BANDS * 4:
        return header
    side = min(size, 250)
    tile = make_synthetic(H=side, W=side, p=4, n_bands=BANDS, seed=seed).cube.astype(np.float32)
    reps = -(-size // side)
    row = np.concatenate([tile if k % 2 == 0 else tile[:, ::-1] for k in range(reps)], axis=1)[:, :size]
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as handle:
        for k in range(reps):
            (row if k % 2 == 0 else row[::-1])[: size - k * side].tofile(handle)
    os.replace(tmp, path)
    header.write_text(f"ENVI\nsamples = {size}\nlines = {size}\nbands = {BANDS}\nheader offset = 0\n"
                      "file type = ENVI Standard\ndata type = 4\ninterleave = bip\nbyte order = 0\n")
    return header


def scaled_params(method: str, scale: float) -> dict:
    """Epoch counts of a deep method times `scale` (at least 1)."""
    family = "gauss" if method.startswith("gauss") else method
    if scale == 1.0 or family not in EPOCH_KEYS:
        return {}
    if family == "gauss":
        return {key: max(1, round(DEFAULT_EPOCHS[key] * scale)) for key in EPOCH_KEYS[family]}
    return {"epochs": max(1, round(DEFAULT_EPOCHS[family] * scale))}


def child(method: str, header: str, threads: int, params: dict) -> dict:
    """Fit + transform in this (fresh) process; its peak RSS is the method's."""
    import torch
    from threadpoolctl import threadpool_limits

    from hyperunmix import make_method
    from hyperunmix.rasters import read_envi

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    cube = read_envi(Path(header)).cube  # memory-mapped, float32
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = make_method(method, n_endmembers=4, random_state=0, **params)
    start = time.perf_counter()
    model.fit(cube)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    A = model.transform(cube)
    transform_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the checks below, which are not the method's
    return {"fit_s": fit_s, "transform_s": transform_s, "peak_rss_gib": peak / 2**20,
            "rss_after_imports_gib": idle / 2**20, "sum_to_one_max_error": float(np.abs(A.sum(axis=0) - 1).max()),
            "max_difference_from_fit": float(np.abs(A - model.abundances_).max())}


def measure(method: str, header: Path, threads: int, params: dict) -> dict:
    command = [sys.executable, __file__, "--child", method, str(header), "--threads", str(threads),
               "--params", json.dumps(params)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    lines = [f"# Memory on large scenes ({report['machine']}, {report['threads']} thread(s), "
             "OMP_WAIT_POLICY=PASSIVE)", "",
             f"Float32 ENVI cubes x {BANDS} bands, memory-mapped; each cell a fresh process: fit, then transform "
             f"of the whole scene. Default `sample_size` ({report['sample_size']} pixels).", "",
             f"## Peak RSS (GiB) and time (fit + transform, s); deep methods at {report['grid_epoch_scale']}x "
             "their default epochs", "",
             "| method | " + " | ".join(f"{s}^2" for s in report["grid_sizes"])
             + f" | 500^2 / 250^2 (<= {MAX_RATIO}) |",
             "|---" * (len(report["grid_sizes"]) + 2) + "|"]
    for method, cells in report["grid"].items():
        text = [f"{c['peak_rss_gib']:.2f} ({c['fit_s'] + c['transform_s']:.0f} s)" if "error" not in c
                else f"error: {c['error']}" for c in cells.values()]
        ratio = report["ratios"].get(method)
        lines.append(f"| {method} | " + " | ".join(text) + f" | {'n/a' if ratio is None else f'{ratio:.2f}'} |")
    lines += ["", "## Targets on 1000^2 (default settings)", "",
              "| method | fit (s) | transform (s) | peak RSS (GiB) | target | met |", "|---|---|---|---|---|---|"]
    for method, cell in report["targets"].items():
        if "error" in cell:
            lines.append(f"| {method} | error: {cell['error']} | | | | no |")
            continue
        goal = TARGETS[method]
        note = " (extrapolated from scaled epochs)" if cell.get("extrapolated") else ""
        lines.append(f"| {method} | {cell['fit_s']:.0f}{note} | {cell['transform_s']:.0f} | "
                     f"{cell['peak_rss_gib']:.2f} | <= {goal['max_gib']:.0f} GiB, <= {goal['max_s'] / 60:.0f} min | "
                     f"{'yes' if cell['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "hyperunmix-bench-memory")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--grid-epochs", type=float, default=0.1, help="epoch scale of the 250^2 / 500^2 grid")
    parser.add_argument("--grid-sizes", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--target-epoch-scale", type=float, default=1.0)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "HEADER"), help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.threads, json.loads(args.params))))
        return
    from hyperunmix.methods.base import SAMPLE_SIZE

    args.scratch.mkdir(parents=True, exist_ok=True)
    headers = {size: write_envi(args.scratch / f"cube{size}.img", size) for size in {*args.grid_sizes, 1000}}
    report: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                    "threads": args.threads, "load_average_at_start": os.getloadavg()[0], "sample_size": SAMPLE_SIZE,
                    "grid_sizes": args.grid_sizes, "grid_epoch_scale": args.grid_epochs, "grid": {}, "ratios": {},
                    "targets": {}}
    for method in GRID_METHODS:
        params = scaled_params(method, args.grid_epochs)
        cells = report["grid"][method] = {}
        for size in args.grid_sizes:
            cells[str(size)] = measure(method, headers[size], args.threads, params)
            print(method, size, cells[str(size)], flush=True)
        if all("error" not in cells.get(str(s), {"error": 1}) for s in (250, 500)):
            report["ratios"][method] = cells["500"]["peak_rss_gib"] / cells["250"]["peak_rss_gib"]
    for method, goal in TARGETS.items():
        cell = measure(method, headers[1000], args.threads, scaled_params(method, args.target_epoch_scale))
        if "error" not in cell:
            if args.target_epoch_scale != 1.0 and method in ("gauss-blind",):
                # Training time scales with the epochs; the transform does not.
                cell["measured_fit_s"], cell["extrapolated"] = cell["fit_s"], True
                cell["fit_s"] = cell["fit_s"] / args.target_epoch_scale
            seconds = cell["fit_s"] + cell["transform_s"]
            cell["met"] = cell["peak_rss_gib"] <= goal["max_gib"] and seconds <= goal["max_s"]
        report["targets"][method] = cell
        print(method, 1000, cell, flush=True)
    atomic_write(args.out / "bench_memory.json", lambda h: json.dump(report, h, indent=2), mode="w")
    atomic_write(args.out / "bench_memory.md", lambda h: h.write(markdown(report)), mode="w")
    print(markdown(report))
    flat = [m for m, r in report["ratios"].items() if r > MAX_RATIO]
    missing = [m for m in GRID_METHODS if m not in report["ratios"]]
    assert not flat and not missing, f"memory grows with the scene for {flat}; not measured: {missing}"


if __name__ == "__main__":
    main()
