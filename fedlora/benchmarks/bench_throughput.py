"""Throughput of local training and evaluation: today's fp32 path against bf16 autocast, packed
decoder rows and length-grouped batches, alternating in one process (medians; quote the ratios).

Phases: decoder local training of one client and decoder evaluation (cpu-smollm2-135m), one
encoder round (cpu-minilm: 3 clients' training + evaluation), and the new decoder training at
1 vs 2 threads. Every phase also reports real vs padded tokens. Results go to
results/bench_throughput.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from fedlora import client  # noqa: E402
from fedlora.client import local_update, plan_micro_batches, resolve_train, step_plan  # noqa: E402
from fedlora.config import load_config  # noqa: E402
from fedlora.engine import build_federation, run_round  # noqa: E402
from fedlora.evaluation import evaluate  # noqa: E402
from fedlora.models import initial_state  # noqa: E402
from fedlora.precision import native_bf16  # noqa: E402
from fedlora.progress import Progress  # noqa: E402
from fedlora.scoring import Encoded, pack_rows  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
OUT = HERE / "results"
QUIET = lambda msg: None  # noqa: E731
TODAY = "fp32 (today)"
ROWS = client.PACKED_ROW_TOKENS


def batch_tokens(data: Encoded, idx: list[int], packed: bool = False, row_tokens: int = 0) -> tuple[int, int]:
    """(real, padded) tokens the model processes for one batch of items."""
    if data.family == "encoder":
        real = sum(len(seq) for i in idx for seq in data.pairs[i])
        return real, 4 * len(idx) * max(len(seq) for i in idx for seq in data.pairs[i])
    ctx = [len(data.contexts[i]) for i in idx]
    ends = [len(e) for i in idx for e in data.endings[i]]
    real = sum(ctx) + sum(ends)
    if packed:  # rows of one or more items, each its context + its 4 endings
        sizes = [c + sum(map(len, data.endings[i])) for c, i in zip(ctx, idx)]
        rows = pack_rows(sizes, row_tokens)
        return real, len(rows) * max(sum(sizes[j] for j in row) for row in rows)
    return real, len(idx) * max(ctx) + len(ends) * max(ends)


def plan_tokens(plan: list[list[list[int]]], data: Encoded, packed: bool = False, row_tokens: int = 0) -> dict:
    real, padded = map(sum, zip(*(batch_tokens(data, mb, packed, row_tokens) for step in plan for mb in step)))
    return {"real_tokens": real, "padded_tokens": padded, "padding_share": 1 - real / padded}


def timed_alternating(variants: dict, reps: int) -> dict[str, list[float]]:
    """Seconds of each variant's callable, the variants taking turns within every repeat, after
    one untimed turn (first calls allocate and pick kernels)."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def summarize(times: dict[str, list[float]], extra: dict) -> dict:
    base = statistics.median(times[TODAY])
    return {name: {"median_s": statistics.median(ts), "runs_s": ts, "speedup": base / statistics.median(ts),
                   **extra.get(name, {})} for name, ts in times.items()}


def decoder_training(threads: int, reps: int) -> dict:
    """One client's local update (the config's 8 examples in 2 steps), per training variant."""
    cfg = load_config(CONFIGS / "cpu-smollm2-135m.yaml", [f"threads={threads}"])
    fed = build_federation(cfg, log=QUIET)
    state = initial_state(fed.model, cfg.seed)
    data = fed.client_data[0]
    # Same 8 examples and the same 2 optimizer steps in every variant; packed training shares rows
    # of up to client.PACKED_ROW_TOKENS among a micro-batch's items, or (row tokens 0) one per item.
    variants = {TODAY: ({}, 0), "bf16": ({"precision": "bf16"}, 0), "fp32, packed": ({"packing": True}, ROWS),
                "bf16, packed, one row per item": ({"precision": "bf16", "packing": True}, 0),
                "bf16, packed": ({"precision": "bf16", "packing": True}, ROWS)}
    trains = {name: resolve_train(cfg.train.model_copy(update=upd), fed.family) for name, (upd, _) in variants.items()}
    losses, extra = {}, {}
    for name, train in trains.items():
        micro = plan_micro_batches(len(data), train, torch.Generator().manual_seed(0))
        extra[name] = plan_tokens(step_plan(micro, train, data), data, train.packing, variants[name][1])

    def runner(name):
        def run():
            client.PACKED_ROW_TOKENS = variants[name][1]
            try:
                losses[name] = local_update(fed.model, fed.family, data, state, fed.method, trains[name],
                                            seed=(cfg.seed, 1, 0)).mean_loss
            finally:
                client.PACKED_ROW_TOKENS = ROWS
        return run

    times = timed_alternating({name: runner(name) for name in trains}, reps)
    for name in trains:
        extra[name]["mean_loss"] = losses[name]
    return summarize(times, extra)


def decoder_evaluation(threads: int, reps: int, n_items: int) -> dict:
    cfg = load_config(CONFIGS / "cpu-smollm2-135m.yaml", [f"threads={threads}", f"data.eval_size={n_items}"])
    fed = build_federation(cfg, log=QUIET)
    initial_state(fed.model, cfg.seed)
    data, bs = fed.eval_data, cfg.eval.batch_size
    order = sorted(range(len(data)), key=data.length)  # as evaluate() batches them
    plan = [[order[i : i + bs] for i in range(0, len(data), bs)]]
    variants = {TODAY: ("fp32", False), "bf16": ("bf16", False), "bf16, packed": ("bf16", True)}
    scores = {}

    def runner(name):
        def run():
            scores[name] = evaluate(fed.model, fed.family, data, bs, *variants[name])
        return run

    times = timed_alternating({name: runner(name) for name in variants}, reps)
    return summarize(times, {k: {**plan_tokens(plan, data, variants[k][1]), "accuracy": v["accuracy"],
                                 "loss": v["loss"]} for k, v in scores.items()})


def encoder_round(threads: int, reps: int, eval_size: int) -> dict:
    """Round 1 of cpu-minilm (3 clients x 30 examples, then evaluation), today vs new."""
    base = [f"threads={threads}", f"data.eval_size={eval_size}", "method.name=fedavg"]
    bf16 = base + ["train.precision=bf16", "eval.precision=bf16"]
    grouped = bf16 + ["train.length_grouping=true", "train.batch_size=5", "train.grad_accum=2",
                      "train.max_local_steps=6"]  # the same 10 examples per step, in 2 sorted halves
    variants = {TODAY: base, "bf16": bf16, "bf16, length-grouped 5 x accum 2": grouped}
    feds = {name: build_federation(load_config(CONFIGS / "cpu-minilm.yaml", over), log=QUIET)
            for name, over in variants.items()}
    state = initial_state(feds[TODAY].model, feds[TODAY].cfg.seed)
    records, extra = {}, {}
    for name, fed in feds.items():
        train = resolve_train(fed.cfg.train, fed.family)
        plans = [step_plan(plan_micro_batches(len(d), train, torch.Generator().manual_seed(0)), train, d)
                 for d in fed.client_data[:3]]
        extra[name] = {k: sum(plan_tokens(p, d)[k] for p, d in zip(plans, fed.client_data))
                       for k in ("real_tokens", "padded_tokens")}
        extra[name]["padding_share"] = 1 - extra[name]["real_tokens"] / extra[name]["padded_tokens"]

    def runner(name):
        def run():
            records.setdefault(name, []).append(run_round(feds[name], state, 1, Progress(enabled=False))[1])
        return run

    times = timed_alternating({name: runner(name) for name in feds}, reps)
    out = summarize(times, extra)
    for name, recs in records.items():
        recs = recs[1:]  # the untimed first turn
        train_s = statistics.median(r.time_train_s for r in recs)
        eval_s = statistics.median(r.time_eval_s for r in recs)
        out[name].update(train_s=train_s, eval_s=eval_s, accuracy=recs[-1].accuracy, loss=recs[-1].loss,
                         client_loss=recs[-1].client_loss)
    for name in out:
        out[name]["train_speedup"] = out[TODAY]["train_s"] / out[name]["train_s"]
        out[name]["eval_speedup"] = out[TODAY]["eval_s"] / out[name]["eval_s"]
    return out


def decoder_threads(reps: int) -> dict:
    """The new decoder training path (bf16, packed) at 1 and at 2 intra-op threads."""
    cfg = load_config(CONFIGS / "cpu-smollm2-135m.yaml", ["train.precision=bf16", "train.packing=true"])
    fed = build_federation(cfg, log=QUIET)
    state = initial_state(fed.model, cfg.seed)
    train = resolve_train(cfg.train, fed.family)

    def runner(n):
        def run():
            torch.set_num_threads(n)
            local_update(fed.model, fed.family, fed.client_data[0], state, fed.method, train, seed=(cfg.seed, 1, 0))
        return run

    times = timed_alternating({"2 threads": runner(2), "1 thread": runner(1)}, reps)
    return {k: statistics.median(v) for k, v in times.items()} | {
        "two_over_one_speedup": statistics.median(times["1 thread"]) / statistics.median(times["2 threads"])}


def markdown(r: dict) -> str:
    lines = [f"# fedlora throughput: today's fp32 path vs bf16 autocast, packing, length grouping "
             f"({r['threads']} threads, {r['reps']} alternating repeats, medians)", "",
             f"CPU bf16: {r['bf16_native']}. Load average at start: {r['load_average'][0]:.2f}. "
             "Speed-up = today's median time / the variant's.", "",
             "| phase | variant | median s | speed-up | real / padded tokens | padding | loss |",
             "|---|---|---|---|---|---|---|"]
    for phase, key in [("decoder local training (1 client)", "decoder_train"),
                       ("decoder evaluation", "decoder_eval"), ("encoder round (train + eval)", "encoder_round")]:
        for name, v in r[key].items():
            loss = v.get("mean_loss", v.get("loss"))
            lines.append(f"| {phase} | {name} | {v['median_s']:.2f} | {v['speedup']:.2f}x | "
                         f"{v['real_tokens']} / {v['padded_tokens']} | {100 * v['padding_share']:.0f}% | "
                         f"{loss:.4f} |")
    enc = r["encoder_round"]
    lines += [""] + [f"- encoder round, {name}: training {v['train_s']:.2f}s ({v['train_speedup']:.2f}x), "
                     f"evaluation {v['eval_s']:.2f}s ({v['eval_speedup']:.2f}x), accuracy {v['accuracy']:.3f}"
                     for name, v in enc.items()]
    ev = r["decoder_eval"]
    lines.append("- decoder evaluation accuracy: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in ev.items()))
    if "thread_counts" in r:
        t = r["thread_counts"]
        lines.append(f"- new decoder training, 2 threads vs 1: {t['2 threads']:.2f}s vs {t['1 thread']:.2f}s "
                     f"({t['two_over_one_speedup']:.2f}x)")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--eval-items", type=int, default=24, help="decoder evaluation items")
    ap.add_argument("--encoder-eval-size", type=int, default=100)
    ap.add_argument("--skip-threads", action="store_true")
    args = ap.parse_args()
    native, why = native_bf16(torch.device("cpu"))
    result = {"threads": args.threads, "reps": args.reps, "load_average": os.getloadavg(),
              "bf16_native": why, "torch": torch.__version__}
    print("decoder local training", flush=True)
    result["decoder_train"] = decoder_training(args.threads, args.reps)
    print("decoder evaluation", flush=True)
    result["decoder_eval"] = decoder_evaluation(args.threads, args.reps, args.eval_items)
    print("encoder round", flush=True)
    result["encoder_round"] = encoder_round(args.threads, args.reps, args.encoder_eval_size)
    if not args.skip_threads:
        print("threads", flush=True)
        result["thread_counts"] = decoder_threads(args.reps)
    result["load_average_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_throughput.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (OUT / "bench_throughput.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
