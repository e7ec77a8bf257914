"""Where the time goes on Flower: the same 3-round run on the in-process engine, Flower's
simulation engine and a local deployment (SuperLink + 3 SuperNodes), in one command.

    python fedlora/benchmarks/bench_flower.py [--config CONFIG] [--set key=value ...] [--out DIR]

Reports total wall time, start-up (processes, node discovery), and per round the time waiting
for client replies vs the time the in-process engine spends training the same clients; the
difference is messaging overhead (per-message process start, polling). The deployment runs
twice: with this package's polling (SuperExec 1 s as Flower, ServerApp replies every 1 s instead
of Flower's 3 s) and with 0.2 s for both, and once more with secure aggregation (SecAgg+: four
message exchanges per round instead of one). A fresh process, as a deployment starts for every
message, measures what a message pays before it trains (imports, config, data, model). The
default config is MiniLM with about 17 s of training per client and round (1 thread), so the
fixed costs are weighed against real work. Results: results/bench_flower.{json,md}, with
`deploy_round_over_inprocess` (mean deployment round / mean in-process round).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
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
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SET = ["rounds=3", "federation.num_clients=3", "federation.fraction=0.67", "data.train_size=600",
               "data.eval_size=50", "train.max_local_steps=6", "threads=1"]
# What a fresh ClientApp process pays before it trains, stage by stage (run in a new interpreter).
MESSAGE_COST = """
import json, sys, time
t = [time.perf_counter()]
import torch; t.append(time.perf_counter())
import transformers, peft; t.append(time.perf_counter())
import fedlora.flower, flwr.clientapp; t.append(time.perf_counter())
from fedlora.config import load_config
from fedlora.data import load_pools
from fedlora.engine import build_federation
cfg = load_config(sys.argv[1], json.loads(sys.argv[2])); t.append(time.perf_counter())
load_pools(cfg.data, cfg.seed, log=lambda _: None); t.append(time.perf_counter())
build_federation(cfg, log=lambda _: None, node=0); t.append(time.perf_counter())
names = ["import_torch_s", "import_transformers_peft_s", "import_flower_s", "config_s", "read_pools_s",
         "node_federation_s"]
print(json.dumps({n: b - a for n, a, b in zip(names, t, t[1:])}))
"""


def message_cost(config: str, overrides: list[str]) -> dict:
    """Stages of a fresh process's start (node_federation_s reads the pools again, loads the model
    and tokenises the node's partition)."""
    out = subprocess.run([sys.executable, "-c", MESSAGE_COST, config, json.dumps(overrides)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--config", default=str(ROOT / "configs" / "cpu-minilm.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="folder for the run folders (default: a temporary one)")
    parser.add_argument("--results", default=str(RESULTS), help="folder for bench_flower.json and .md")
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
    build_federation(cfg, log=quiet)  # the whole federation, as the ServerApp and in-process engine build it
    results["build_federation_s"] = {"wall_s": time.perf_counter() - t0}
    results["message_cost"] = message_cost(args.config, DEFAULT_SET + args.overrides)
    results["in-process"] = timed("in-process", lambda: train_federation(cfg, out / "in-process", overwrite=True,
                                                                        log=quiet))
    results["flower-simulation"] = timed("simulation", lambda: flower_simulate(
        cfg, out / "simulation", log=quiet, timeout_s=1800))
    results["flower-deployment"] = timed("deployment (1 s polling)", lambda: flower_deploy(
        cfg, out / "deployment", log=quiet, timeout_s=1800))
    if not args.skip_fast_polling:
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.2"
        try:
            results["flower-deployment-fast-polling"] = timed("deployment (0.2 s polling)", lambda: flower_deploy(
                cfg, out / "deployment-fast-polling", log=quiet, timeout_s=1800, poll_interval_s=0.2))
        finally:
            del os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"]

    results["flower-deployment-secagg"] = timed("deployment with SecAgg+", lambda: flower_deploy(
        cfg, out / "deployment-secagg", log=quiet, timeout_s=1800, secure_aggregation=True))

    folders = {"in-process": "in-process", "flower-simulation": "simulation", "flower-deployment": "deployment",
               "flower-deployment-fast-polling": "deployment-fast-polling",
               "flower-deployment-secagg": "deployment-secagg"}
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
    rounds = {key: statistics.mean(results[key]["rounds"]["round_s"]) for key in folders if key in results}
    for key, name in (("flower-simulation", "simulation"), ("flower-deployment", "deploy"),
                      ("flower-deployment-secagg", "secagg_deploy")):
        results[f"{name}_round_over_inprocess"] = rounds[key] / rounds["in-process"]
    trained = results["in-process"]["rounds"]
    per_client = statistics.mean(trained["train_wait_s"]) / trained["clients_per_round"]
    cost = results["message_cost"]
    lines = table + ["", f"Deployment round / in-process round: {results['deploy_round_over_inprocess']:.2f}x "
                     f"(simulation: {results['simulation_round_over_inprocess']:.2f}x; deployment with SecAgg+: "
                     f"{results['secagg_deploy_round_over_inprocess']:.2f}x). In-process training per "
                     f"client and round: {per_client:.1f} s.", "",
                     "What one fresh ClientApp process pays before it trains (a deployment starts one per message):",
                     "", "| stage | s |", "|---|---|"]
    lines += [f"| {name.removesuffix('_s').replace('_', ' ')} | {value:.2f} |" for name, value in cost.items()]
    lines += [f"| total | {sum(cost.values()):.2f} |"]
    text = "\n".join(lines)
    print(text)
    config = Path(args.config).resolve()
    shown = config.relative_to(ROOT.parent) if config.is_relative_to(ROOT.parent) else config.name
    results["config"] = {"file": str(shown), "set": DEFAULT_SET + args.overrides}
    results["load_average"] = os.getloadavg()
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_flower.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (folder / "bench_flower.md").write_text(f"# Flower vs in-process: {cfg.model.name}, {cfg.federation.num_clients} "
                                            f"clients, {cfg.rounds} rounds\n\n" + text + "\n")


if __name__ == "__main__":
    main()
