"""Ablation of the GAUSS design choices; regenerates docs/ablation.md.

    python -m hyperunmix.ablation [--seeds 0-2] [--factor-seeds 0] [--datasets samson,...]
                                  [--out docs/ablation.md] [--threads 2]
    python -m hyperunmix.ablation --abundances [--seeds 0-4] [--datasets ...]
                                  [--out docs/ablation-abundances.md] [--threads 1]

Part 1 compares the three GAUSS variants with the signal-processing baselines over `--seeds`.
Part 2 changes one setting at a time from the GAUSS_blind defaults (neighbourhood size, MN
kind, UN loss, k-means input, stage-2 pseudo-GT weight, SAD term) over `--factor-seeds`.
`--abundances` instead compares GAUSS's two abundance sources (`abundances_from`: the network,
or FCLSU with GAUSS's endmembers) for gauss-blind and gauss-prime over `--seeds`.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hyperunmix.datasets import load_dataset
from hyperunmix.fcls import fcls
from hyperunmix.files import atomic_write
from hyperunmix.methods import make_method
from hyperunmix.methods.gauss import scaled_endmembers
from hyperunmix.metrics import score

VARIANTS = ["gauss", "gauss-blind", "gauss-prime", "vca-fcls", "nfindr-fcls", "kmeans-fcls"]
GAUSS_VARIANTS = VARIANTS[:3]
BASE = "gauss-blind"
FACTORS: list[tuple[str, dict]] = [
    ("window 1 (no neighbourhood)", {"window": 1}),
    ("window 5", {"window": 5}),
    ("deep MN", {"mn": "deep"}),
    ("UN loss MSE", {"un_loss": "mse"}),
    ("k-means on raw pixels", {"kmeans_on": "raw"}),
    ("paper's pseudo-GT (k-means on p clusters, one-hot)", {"pseudo_gt": "kmeans"}),
    ("paper's pseudo-GT, weight 1 decaying by 0.8 (defaults before 2026-12-01)",
     {"pseudo_gt": "kmeans", "pseudo_gt_weight": 1.0, "pseudo_gt_decay": 0.8}),
    ("only the chosen clusters pure (pure_threshold 1)", {"pure_threshold": 1.0}),
    ("12 k-means clusters", {"kmeans_clusters": 12}),
    ("no pseudo-GT term in stage 2 (weight 0)", {"pseudo_gt_weight": 0.0}),
    ("pseudo-GT weight 1", {"pseudo_gt_weight": 1.0}),
    ("pseudo-GT decaying by 0.8 per epoch", {"pseudo_gt_decay": 0.8}),
    ("no SAD term (sad_weight 0, MSE only)", {"sad_weight": 0.0, "stage2_mse_weight": 1.0}),
    ("stage 2 adds relative MSE (stage2_mse_weight 1)", {"stage2_mse_weight": 1.0}),
    ("stage-2 lr 1e-3", {"stage2_lr": 1e-3}),
    ("abundance smoothness 0.1", {"smooth_weight": 0.1}),
    ("stage 2 also trains the AN", {"train_an": True}),
    ("abundances by FCLSU from the endmembers", {"abundances_from": "fcls"}),
    ("no unit endmembers, no UN refinement (before 2026-11-30)", {"unit_endmembers": False, "refine_epochs": 0}),
]
ABUNDANCE_METHODS = ["gauss-blind", "gauss-prime"]
DOCS = Path(__file__).resolve().parents[2] / "docs"
DEFAULT_OUT = DOCS / "ablation.md"
ABUNDANCES_OUT = DOCS / "ablation-abundances.md"


def parse_seeds(text: str) -> list[int]:
    """'0-2' -> [0, 1, 2]; '0,3' -> [0, 3]."""
    seeds: list[int] = []
    for part in text.split(","):
        try:
            first, _, last = part.partition("-")
            seeds += list(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"seeds must look like '0-4' or '0,2,5', got {text!r}") from None
    return seeds


def run_once(scene, method: str, seed: int, params: dict) -> dict:
    start = time.perf_counter()
    model = make_method(method, scene.p, seed, **params).fit(scene.cube)
    elapsed = time.perf_counter() - start
    scores = score(model.endmembers_, model.abundances_, scene.E, scene.A)
    return {"sad": scores["mean_sad_deg"], "armse": scores["armse"], "time": elapsed}


def run_rows(scene, rows: list[tuple[str, str, dict]], seeds: list[int]) -> dict[str, dict]:
    """rows: (label, method, params) -> label -> {metric: (mean, std)}."""
    table = {}
    for label, method, params in rows:
        runs = [run_once(scene, method, seed, params) for seed in seeds]
        table[label] = {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
                        for k in runs[0]}
        cell = table[label]
        print(f"  {scene.name:14s} {label:42s} SAD {cell['sad'][0]:6.2f} deg  aRMSE {cell['armse'][0]:.3f}"
              f"  {cell['time'][0]:5.1f} s", flush=True)
    return table


def markdown_table(table: dict[str, dict], reference: str | None = None) -> list[str]:
    head = "| setting | mean SAD (deg) | aRMSE | time (s) |" + (" ΔSAD | ΔaRMSE |" if reference else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, cell in table.items():
        row = (f"| {label} | {cell['sad'][0]:.2f} ± {cell['sad'][1]:.2f} | {cell['armse'][0]:.3f} ± "
               f"{cell['armse'][1]:.3f} | {cell['time'][0]:.1f} |")
        if reference:
            ref = table[reference]
            row += f" {cell['sad'][0] - ref['sad'][0]:+.2f} | {cell['armse'][0] - ref['armse'][0]:+.3f} |"
        lines.append(row)
    return lines


def verdict(name: str, table: dict[str, dict]) -> str:
    """Is one GAUSS variant at or below the best baselines on both mean SAD and aRMSE?

    The variant shown is the lowest-SAD one among those that meet both, else the lowest-SAD one.
    """
    baselines = [m for m in table if m not in GAUSS_VARIANTS]
    best_sad = min(baselines, key=lambda m: table[m]["sad"][0])
    best_armse = min(baselines, key=lambda m: table[m]["armse"][0])
    meets_both = [m for m in GAUSS_VARIANTS if table[m]["sad"][0] <= table[best_sad]["sad"][0]
                  and table[m]["armse"][0] <= table[best_armse]["armse"][0]]
    best_gauss = min(meets_both or GAUSS_VARIANTS, key=lambda m: table[m]["sad"][0])
    g = table[best_gauss]
    return (f"- **{name}**: best GAUSS variant `{best_gauss}` {g['sad'][0]:.2f} deg / {g['armse'][0]:.3f}; "
            f"best baseline SAD `{best_sad}` {table[best_sad]['sad'][0]:.2f} deg, best baseline aRMSE "
            f"`{best_armse}` {table[best_armse]['armse'][0]:.3f} -> SAD "
            f"{'at or below' if g['sad'][0] <= table[best_sad]['sad'][0] else 'ABOVE'}, aRMSE "
            f"{'at or below' if g['armse'][0] <= table[best_armse]['armse'][0] else 'ABOVE'}.")


def report(results: dict, seeds: list[int], factor_seeds: list[int], threads: int, wall: float) -> str:
    lines = [
        "# GAUSS ablation",
        "",
        "Generated by `python -m hyperunmix.ablation` "
        f"(seeds {seeds} for the variants, {factor_seeds} for the one-at-a-time changes; "
        f"torch threads {threads}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical cores; times are single runs, indicative only; "
        f"total {wall / 60:.1f} min). Scores: Hungarian matching on spectral angle, mean SAD in "
        "degrees, aRMSE over all p x N abundances on the 0-1 scale, mean ± std over seeds.",
        "",
        "## Variants against the baselines",
        "",
    ]
    for name, part in results.items():
        lines += [f"### {name}", "", *markdown_table(part["variants"]), ""]
    lines += ["Best GAUSS variant (by mean SAD) against the best baseline per metric:", ""]
    lines += [verdict(name, part["variants"]) for name, part in results.items()] + [""]
    lines += [
        "## One change at a time from the GAUSS_blind defaults",
        "",
        "Defaults: window 3, linear MN, UN loss cross-entropy, k-means (24 clusters) on the "
        "AN-approximated pixels, the extreme clusters and every cluster at least 0.9 pure as "
        "one-hot pseudo-GT, soft targets for the others, stage-1 reconstruction loss = relative "
        "MSE + 3 x SAD, stage 2 of 40 epochs (Adam, lr 3e-3) on 3 x SAD alone with pseudo-GT "
        "weight 3, no decay, "
        "no abundance smoothness term, then the MN's columns scaled to unit norm and 10 epochs of the "
        "UN alone on the same loss. Δ columns: change against the default "
        "row (negative is better).",
        "",
    ]
    for name, part in results.items():
        lines += [f"### {name}", "", *markdown_table(part["factors"], reference="default"), ""]
    return "\n".join(lines) + "\n"


def abundance_runs(scene, method: str, seeds: list[int]) -> list[dict]:
    """Per seed, the scores of the three abundance sources. `abundances_from` changes nothing
    before the last step, so one network fit gives all three: FCLSU with the (scaled) endmembers
    is exactly what `abundances_from="fcls"` (`"scaled-fcls"`) returns (tests/test_gauss.py)."""
    runs = []
    for seed in seeds:
        model = make_method(method, scene.p, seed).fit(scene.cube)
        E, A = model.endmembers_, model.abundances_.reshape(scene.p, -1)
        by_fcls = score(E, fcls(scene.Y, E), scene.E, scene.A)
        E_scaled = scaled_endmembers(scene.Y, E, A)
        by_scaled = score(E_scaled, fcls(scene.Y, E_scaled), scene.E, scene.A)
        network = score(E, A, scene.E, scene.A)
        runs.append({"sad": network["mean_sad_deg"], "network": network["armse"], "fcls": by_fcls["armse"],
                     "scaled-fcls": by_scaled["armse"], "fit_time": model.fit_time_})
        print(f"  {scene.name:18s} {method:12s} seed {seed}  SAD {network['mean_sad_deg']:6.2f} deg  aRMSE network "
              f"{network['armse']:.4f}  fcls {by_fcls['armse']:.4f}  scaled-fcls {by_scaled['armse']:.4f}  "
              f"fit {model.fit_time_:5.1f} s", flush=True)
    return runs


SOURCES = ["network", "fcls", "scaled-fcls"]


def abundance_report(results: dict[str, dict[str, list[dict]]], seeds: list[int], threads: int, wall: float,
                     command: str) -> str:
    lines = [
        "# GAUSS abundances: the network's, or FCLSU with GAUSS's endmembers",
        "",
        f"Generated by `{command}` (seeds {seeds}, default parameters otherwise; torch threads {threads}; "
        f"total {wall / 60:.1f} min). `abundances_from`: `network` returns UN(AN(patch)), `fcls` FCLSU of "
        "every pixel with the MN's endmembers, `scaled-fcls` FCLSU after scaling each endmember by least "
        "squares against the network's abundances. The endmember directions, and so the SAD, are the same "
        "for the three. aRMSE mean ± std over seeds; Δ: the per-seed difference to `network` (negative is "
        "better), mean ± std, and on how many seeds it is better.",
        "",
        "| scene | method | mean SAD (deg) | abundances | aRMSE | Δ aRMSE | better | fit (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, per_method in results.items():
        for method, runs in per_method.items():
            get = lambda key: np.array([run[key] for run in runs])
            for source in SOURCES:
                delta = get(source) - get("network")
                compared = "" if source == "network" else f"{delta.mean():+.3f} ± {delta.std():.3f}"
                better = "" if source == "network" else f"{int((delta < 0).sum())}/{len(delta)}"
                lines.append(f"| {name} | {method} | {get('sad').mean():.2f} ± {get('sad').std():.2f} | {source} | "
                             f"{get(source).mean():.3f} ± {get(source).std():.3f} | {compared} | {better} | "
                             f"{get('fit_time').mean():.1f} |")
    lines += ["", "Rule: an abundance source becomes the default only if, for both methods, its mean aRMSE is "
              "lower on every real scene and not higher on any synthetic one.", ""]
    lines += [abundance_verdict(results, source) for source in SOURCES[1:]]
    return "\n".join(lines) + "\n"


def abundance_verdict(results: dict[str, dict[str, list[dict]]], source: str) -> str:
    """One line: on which scenes `source` beats the network's abundances, and whether it qualifies."""
    better, worse = [], []
    for name, per_method in results.items():
        for method, runs in per_method.items():
            delta = np.mean([run[source] - run["network"] for run in runs])
            (better if delta < 0 else worse).append(f"{name} {method} ({delta:+.3f})")
    real_worse = [w for w in worse if not w.startswith("synthetic")]
    synthetic_worse = [w for w in worse if w.startswith("synthetic")]
    qualifies = not real_worse and not synthetic_worse
    return (f"- `{source}`: better on {', '.join(better) or 'none'}; worse on {', '.join(worse) or 'none'} -> "
            f"{'qualifies as the default' if qualifies else 'does not qualify; the default stays `network`'}.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--factor-seeds", default="0")
    parser.add_argument("--datasets", default="samson,jasper-ridge,synthetic")
    parser.add_argument("--out", type=Path, default=None, help="default docs/ablation.md, with --abundances "
                        "docs/ablation-abundances.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--abundances", action="store_true", help="compare the abundance sources only")
    args = parser.parse_args(argv)
    seeds, factor_seeds = parse_seeds(args.seeds), parse_seeds(args.factor_seeds)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.abundances:
        out = args.out or ABUNDANCES_OUT
        results = {name: {method: abundance_runs(load_dataset(name), method, seeds) for method in ABUNDANCE_METHODS}
                   for name in args.datasets.split(",")}
        command = (f"python -m hyperunmix.ablation --abundances --seeds {args.seeds} --datasets {args.datasets} "
                   f"--threads {args.threads}")
        text = abundance_report(results, seeds, args.threads, time.perf_counter() - start, command)
        atomic_write(out, lambda handle: handle.write(text), mode="w")
        print(f"wrote {out}")
        return
    results = {}
    for name in args.datasets.split(","):
        scene = load_dataset(name)
        variants = run_rows(scene, [(m, m, {}) for m in VARIANTS], seeds)
        factor_rows = [(label, BASE, params) for label, params in FACTORS]
        if factor_seeds == seeds:
            factors = {"default": variants[BASE]}
        else:
            factors = run_rows(scene, [("default", BASE, {})], factor_seeds)
        factors.update(run_rows(scene, factor_rows, factor_seeds))
        results[name] = {"variants": variants, "factors": factors}
    text = report(results, seeds, factor_seeds, args.threads, time.perf_counter() - start)
    out = args.out or DEFAULT_OUT
    atomic_write(out, lambda handle: handle.write(text), mode="w")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
