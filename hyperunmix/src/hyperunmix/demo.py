"""`python -m hyperunmix.demo`: GAUSS variants, signal-processing and deep baselines on Samson.

Prints the mean ± std table over a few seeds and writes results.csv, summary.md and figures
(the same as `hyperunmix bench --config configs/demo.yaml --out runs/hyperunmix-demo`).
"""
from __future__ import annotations

import argparse
import time

DEMO_CONFIG = {
    "datasets": ["samson"],
    "methods": ["gauss", "gauss-blind", "gauss-prime", "vca-fcls", "nfindr-fcls", "kmeans-fcls", "nmf",
                "cnnaeu", "autoencoder", "oracle-fcls"],
    "seeds": [0, 1],
    # CNNAEU at a quarter of its paper's budget, to keep the demo within minutes (see configs/demo.yaml).
    "params": {"cnnaeu": {"epochs": 120, "patches_per_epoch": 16, "batch_size": 8}},
    "figures": "first-seed",
}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from hyperunmix.bench import BenchConfig, markdown_table, parse_seeds, run_bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hyperunmix-demo", help="output directory (default runs/hyperunmix-demo)")
    parser.add_argument("--seeds", default=None, help="e.g. 0-2 (default 0,1)")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the demo methods")
    args = parser.parse_args(argv)
    values = dict(DEMO_CONFIG)
    if args.seeds:
        values["seeds"] = parse_seeds(args.seeds)
    if args.methods:
        values["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    config = BenchConfig(**values)
    console = Console()
    start = time.perf_counter()
    with console.status("") as status:
        # resume=False: the demo shows the methods running, so it fits every run again.
        rows, summary = run_bench(config, args.out, on_progress=lambda label: status.update(f"running {label}"),
                                  resume=False)
    print(markdown_table(summary))  # plain print: rich would wrap the table's long lines
    failed = [r for r in rows if r["status"] != "ok"]
    for row in failed:
        console.print(f"[red]{row['method']} seed {row['seed']} failed:[/red] {row['error']}")
    console.print(f"{len(rows)} runs in {time.perf_counter() - start:.0f} s; results, table and figures in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
