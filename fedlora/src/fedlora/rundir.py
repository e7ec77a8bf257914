"""The run folder: resolved config, metrics, summary, partition statistics, adapters, checkpoint.

Layout of one run folder:
    config.yaml            resolved configuration (every default filled in)
    status.json            running | failed (with the error) | complete
    metrics.jsonl          one JSON line per round; a new run never appends to an old file
    partition.json         per-client sizes and label statistics
    summary.json           written last: its presence marks a complete run
    checkpoint/            global adapter + head (safetensors) and round state, for `resume`
    adapter_best/ adapter_final/   PEFT format, loadable with PeftModel.from_pretrained
    plots/*.png            accuracy, loss, geometry per round
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedlora.config import RunConfig, config_from_dict, dump_config
from fedlora.state import AdapterState


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- life cycle -------------------------------------------------------------------------
    def check_free(self) -> None:
        if self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(
                f"run folder {self.path} is not empty; use `fedlora resume {self.path}` to continue "
                "it or pass --overwrite to start again"
            )

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def create(self, cfg: RunConfig) -> None:
        """Start a fresh run folder; refuses to clobber an existing run."""
        self.check_free()
        self.path.mkdir(parents=True, exist_ok=True)
        self.set_status("running")
        atomic_write_text(self.path / "config.yaml", dump_config(cfg))
        (self.path / "metrics.jsonl").write_text("")

    def load_config(self) -> RunConfig:
        file = self.path / "config.yaml"
        if not file.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder (no config.yaml)")
        return config_from_dict(yaml.safe_load(file.read_text()), str(file))

    def set_status(self, status: str, **extra: Any) -> None:
        atomic_write_json(self.path / "status.json", {"status": status, **extra})

    @property
    def status(self) -> str:
        file = self.path / "status.json"
        return read_json(file)["status"] if file.is_file() else "missing"

    @property
    def is_complete(self) -> bool:
        return (self.path / "summary.json").is_file() and self.status == "complete"

    # -- per round ---------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        file = self.path / "metrics.jsonl"
        if not file.is_file():
            return []
        return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_round: int) -> list[dict]:
        """Keep the rounds up to `last_round` (those the checkpoint covers); drop the rest."""
        kept = [m for m in self.read_metrics() if m["round"] <= last_round]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in kept))
        return kept

    # -- checkpoint --------------------------------------------------------------------------
    def save_checkpoint(self, state: AdapterState, round_state: dict) -> None:
        """Global adapter + head + round state, written to a temp folder then swapped in."""
        final = self.path / "checkpoint"
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=".checkpoint."))
        flat = state.flat_dict()
        # safetensors sorts keys; the metadata keeps the layer order so sums over layers replay exactly.
        save_file({k: v.detach().cpu().contiguous() for k, v in flat.items()},
                  str(tmp / "global.safetensors"), metadata={"order": json.dumps(list(flat))})
        torch.save({"torch_rng": torch.get_rng_state()}, tmp / "rng.pt")
        atomic_write_json(tmp / "round.json", round_state)
        old = self.path / ".checkpoint.old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> tuple[AdapterState, dict] | None:
        folder = self.path / "checkpoint"
        if not (folder / "round.json").is_file():
            return None
        file = str(folder / "global.safetensors")
        with safe_open(file, framework="pt") as fh:
            order = json.loads(fh.metadata()["order"])
        tensors = load_file(file)
        state = AdapterState.from_flat_dict({k: tensors[k] for k in order})
        return state, read_json(folder / "round.json")

    # -- end of run --------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)
        self.set_status("complete")

    def read_summary(self) -> dict:
        return read_json(self.path / "summary.json")
