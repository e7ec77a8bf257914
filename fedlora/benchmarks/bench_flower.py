"""Where the time goes on Flower: the same 3-round run on the in-process engine, Flower's
simulation engine and a local deployment (SuperLink + 3 SuperNodes), in one command.

    python fedlora/benchmarks/bench_flower.py [--config CONFIG] [--set key=value ...] [--out DIR]

Reports total wall time, start-up (processes, node discovery), and per round the time waiting
for client replies vs the time the in-process engine spends training the same clients; the
difference is messaging overhead (per-message process start, polling). The deployment runs
twice: with this package's polling (SuperExec 1 s as Flower, ServerApp replies every 1 s instead
of Flower's 3 s) and with 0.2 s for both.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import fedlora.flower  # noqa: F401  (telemetry and update checks off before Flower loads)
from fedlora.config import load_config
from fedlora.engine import build_federation, train_federation
from fedlora.flower.run import flower_deploy, flower_simulate
from fedlora.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SET = ["rounds=3", "federation.num_clients=3", "federation.fraction=0.67", "federation.min_client_size=4",
               "data.train_size=120", "threads=1"]


def round_stats(run: Path) -> dict:
    rounds = [m for m in RunDir(run).read_metrics() if m.round > 0]
    per_round = [m.time_train_s + m.time_aggregate_s + m.time_geometry_s + m.time_eval_s for m in rounds]
    return {"round_s": per_round, "train_wait_s": [m.time_train_s for m in rounds],
            "clients_per_round": statistics.mean(len(m.clients) for m in rounds),
            "final_accuracy": rounds[-1].accuracy, "final_loss": rounds[-1].loss}


def timed(label: str, fn) -> dict:
    t0 = time.perf_counter()
    summary = fn()
    wall = time.perf_counter() - t0
    print(f"  {label}: {wall:.1f} s", file=sys.stderr)
    return {"wall_s": wall, "summary": summary.to_json()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="folder for the run folders and bench_flower.json")
    parser.add_argument("--skip-fast-polling", action="store_true", help="only the default-polling deployment")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, DEFAULT_SET + args.overrides)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-flower-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    quiet = lambda _: None  # noqa: E731
    print(f"bench_flower: {cfg.model.name}, {cfg.federation.num_clients} clients, {cfg.rounds} rounds -> {out}",
          file=sys.stderr)

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    build_federation(cfg, log=quiet)  # what every fresh ClientApp process pays before training
    results["build_federation_s"] = {"wall_s": time.perf_counter() - t0}
    results["in-process"] = timed("in-process", lambda: train_federation(cfg, out / "in-process", overwrite=True,
                                                                        log=quiet))
    results["flower-simulation"] = timed("simulation", lambda: flower_simulate(
        cfg, out / "simulation", log=quiet, timeout_s=1800))
    results["flower-deployment"] = timed("deployment (1 s polling)", lambda: flower_deploy(
        cfg, out / "deployment", log=quiet, timeout_s=1800))
    if not args.skip_fast_polling:
        import os

        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.2"
        try:
            results["flower-deployment-fast-polling"] = timed("deployment (0.2 s polling)", lambda: flower_deploy(
                cfg, out / "deployment-fast-polling", log=quiet, timeout_s=1800, poll_interval_s=0.2))
        finally:
            del os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]

    folders = {"in-process": "in-process", "flower-simulation": "simulation", "flower-deployment": "deployment",
               "flower-deployment-fast-polling": "deployment-fast-polling"}
    table = ["| engine | total wall s | start-up s | node discovery s | mean round s | mean reply wait s |"
             " overhead per round s | final acc | final loss |", "|---|---|---|---|---|---|---|---|---|"]
    base_wait = None
    for key, folder in folders.items():
        if key not in results:
            continue
        stats = round_stats(out / folder)
        results[key]["rounds"] = stats
        timings_file = out / folder / "flower-logs" / "timings.json"
        timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
        results[key]["timings"] = timings
        wait = statistics.mean(stats["train_wait_s"])
        base_wait = wait if key == "in-process" else base_wait
        discovery = results[key]["summary"].get("node_discovery_s")
        table.append(f"| {key} | {results[key]['wall_s']:.1f} | {timings.get('start_s', 0.0):.1f} | "
                     f"{discovery if discovery is None else round(discovery, 1)} | "
                     f"{statistics.mean(stats['round_s']):.1f} | {wait:.1f} | {wait - base_wait:.1f} | "
                     f"{stats['final_accuracy']:.4f} | {stats['final_loss']:.4f} |")
    text = "\n".join(table)
    print(text)
    print(f"\nbuild_federation (paid by every fresh ClientApp process in a deployment): "
          f"{results['build_federation_s']['wall_s']:.1f} s")
    (out / "bench_flower.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "bench_flower.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
