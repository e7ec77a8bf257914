"""The run folder: resolved config, metrics, summary, partition statistics, adapters, checkpoint.

Layout of one run folder:
    config.yaml            resolved configuration (every default filled in)
    status.json            running | failed (with the error) | complete
    metrics.jsonl          one JSON line per round; a new run never appends to an old file
    eval_items.npz         per-item eval scores of every evaluated round (round 0 = zero-shot)
                           and the labels, in the eval subset's order: for paired tests
    partition.json         per-client sizes and label statistics
    summary.json           written last: its presence marks a complete run
    checkpoint/            global adapter + head (safetensors) and round state, for `resume`
    adapter_best/ adapter_final/   PEFT format, loadable with PeftModel.from_pretrained
    plots/*.png            accuracy, loss, geometry per round
    .lock                  PID of the process writing the folder (see lock.py)

Files are replaced atomically and folders swapped (files.py), so a run killed at any moment
resumes from its last complete checkpoint and replays the rounds after it bit-identically.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from fedlora.config import RunConfig, config_from_dict, dump_config
from fedlora.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_folder_path,
    replacing_folder,
    restore_folder,
    swapped_folder_exists,
)
from fedlora.lock import LOCK_NAME, folder_lock
from fedlora.records import RoundRecord, RunSummary
from fedlora.state import AdapterState

# Folders replaced whole after each round or at the end (see files.swap_folder).
SWAPPED_FOLDERS = ("checkpoint", "adapter_best", "adapter_final")


class RunDirError(ValueError):
    """A run folder that cannot be used as asked; the message names the file."""


def read_json(path: Path, what: str) -> Any:
    """JSON from `path`; a damaged file raises RunDirError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSON and UTF-8 errors alike
        raise RunDirError(f"{what} {path} is damaged (not valid JSON: {err})") from None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- life cycle -------------------------------------------------------------------------
    def check_free(self) -> None:
        check_folder_path(self.path, "run folder")
        if self.path.exists() and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            raise FileExistsError(
                f"run folder {self.path} is not empty; use `fedlora resume {self.path}` to continue "
                "it or pass --overwrite to start again"
            )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Only one process writes a run folder (a second `resume` is refused, naming the PID)."""
        with folder_lock(self.path, "run folder"):
            yield

    def clear(self) -> None:
        """Remove the folder's contents but keep its lock file (held by the caller)."""
        for entry in self.path.iterdir():
            if entry.name == LOCK_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def create(self, cfg: RunConfig) -> None:
        """Start a fresh run folder; refuses to clobber an existing run."""
        self.check_free()
        self.path.mkdir(parents=True, exist_ok=True)
        self.set_status("running")
        atomic_write_text(self.path / "config.yaml", dump_config(cfg))
        atomic_write_text(self.path / "metrics.jsonl", "")

    def load_config(self) -> RunConfig:
        check_folder_path(self.path, "run folder")
        file = self.path / "config.yaml"
        if not file.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder (no config.yaml)")
        try:
            tree = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise RunDirError(f"{file} is damaged (not valid YAML: {err})") from None
        return config_from_dict(tree if isinstance(tree, dict) else {}, str(file))

    def restore_swapped_folders(self) -> None:
        """Undo the effect of a kill in the middle of a folder swap (see files.swap_folder)."""
        for name in SWAPPED_FOLDERS:
            restore_folder(self.path / name)

    def set_status(self, status: str, **extra: Any) -> None:
        atomic_write_json(self.path / "status.json", {"status": status, **extra})

    @property
    def status(self) -> str:
        file = self.path / "status.json"
        return read_json(file, "run status file")["status"] if file.is_file() else "missing"

    @property
    def is_complete(self) -> bool:
        return (self.path / "summary.json").is_file() and self.status == "complete"

    # -- per round ---------------------------------------------------------------------------
    def append_metrics(self, record: RoundRecord) -> None:
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record.to_json()) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _parse_metrics(self) -> tuple[list[RoundRecord], bool]:
        """(records, whether a torn last line was skipped).

        A last line without its newline that does not parse is a record cut by a kill (or
        being written right now): it is skipped, and the round is replayed from the checkpoint.
        A bad line anywhere else is damage and raises, naming file and line.
        """
        file = self.path / "metrics.jsonl"
        if not file.is_file():
            return [], False
        *lines, tail = file.read_bytes().split(b"\n")
        records = []
        for lineno, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    records.append(RoundRecord.from_json(json.loads(line)))
                except (ValueError, TypeError) as err:  # JSON, UTF-8 and field errors alike
                    raise RunDirError(f"{file}:{lineno}: damaged metrics line ({err})") from None
        if tail.strip():
            try:
                records.append(RoundRecord.from_json(json.loads(tail)))
            except (ValueError, TypeError):
                return records, True
        return records, False

    def read_metrics(self) -> list[RoundRecord]:
        return self._parse_metrics()[0]

    def truncate_metrics(self, last_round: int, log: Callable[[str], Any] = print) -> list[RoundRecord]:
        """Keep the rounds up to `last_round` (those the checkpoint covers); drop the rest."""
        records, torn = self._parse_metrics()
        if torn:
            log(f"{self.path / 'metrics.jsonl'}: dropped a partly written last line (the run was "
                "interrupted while writing it); the checkpoint's rounds are kept")
        kept = [m for m in records if m.round <= last_round]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(m.to_json()) + "\n" for m in kept))
        return kept

    def write_eval_items(self, round_idx: int, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add (or replace) round `round_idx`'s per-item scores (N, 4) in eval_items.npz, rewritten
        whole and atomically: a kill leaves the previous version."""
        old_labels, rounds = self.read_eval_items()
        if old_labels is not None and not np.array_equal(old_labels, labels):
            raise RunDirError(f"{self.path / 'eval_items.npz'} holds other eval items than this run's")
        rounds[round_idx] = np.asarray(scores, dtype=np.float32)
        self._write_eval_items(labels, rounds)

    def truncate_eval_items(self, last_round: int) -> None:
        """Keep the rounds up to `last_round` (those the checkpoint covers), as `truncate_metrics`."""
        labels, rounds = self.read_eval_items()
        if labels is not None:
            self._write_eval_items(labels, {r: v for r, v in rounds.items() if r <= last_round})

    def _write_eval_items(self, labels: np.ndarray, rounds: dict[int, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, labels=labels, **{f"round_{r}": rounds[r] for r in sorted(rounds)})
        atomic_write_bytes(self.path / "eval_items.npz", buf.getvalue())

    def read_eval_items(self) -> tuple[np.ndarray | None, dict[int, np.ndarray]]:
        """(labels, {round: scores (N, 4)}); (None, {}) when the run recorded none."""
        file = self.path / "eval_items.npz"
        if not file.is_file():
            return None, {}
        try:
            with np.load(file) as npz:
                labels = npz["labels"]
                rounds = {int(k.removeprefix("round_")): npz[k] for k in npz.files if k.startswith("round_")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise RunDirError(f"per-item eval file {file} is damaged ({type(err).__name__}: {err})") from None
        return labels, rounds

    # -- checkpoint --------------------------------------------------------------------------
    def save_checkpoint(self, state: AdapterState, round_state: dict,
                        personal: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
        """Global adapter + head + round state (+ the clients' personal factors of personalized
        methods), written to a temp folder then swapped in."""
        with replacing_folder(self.path / "checkpoint") as tmp:
            _write_tensors(tmp / "global.safetensors", state.flat_dict())
            if personal:
                _write_tensors(tmp / "personal.safetensors",
                               {f"{k}::{name}": t for k, layers in personal.items() for name, t in layers.items()})
            torch.save({"torch_rng": torch.get_rng_state()}, tmp / "rng.pt")
            atomic_write_json(tmp / "round.json", round_state)

    def load_personal(self) -> dict[int, dict[str, torch.Tensor]]:
        """The clients' personal factors of the last checkpoint (empty for shared-only methods)."""
        file = self.path / "checkpoint" / "personal.safetensors"
        if not file.is_file():
            return {}
        personal: dict[int, dict[str, torch.Tensor]] = {}
        try:
            for key, t in _read_tensors(file).items():
                client, _, name = key.partition("::")
                personal.setdefault(int(client), {})[name] = t
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
            raise RunDirError(f"checkpoint file {file} is damaged ({type(err).__name__}: {err}). "
                              f"Start again with `fedlora run --overwrite --out {self.path}`") from None
        return personal

    @property
    def has_checkpoint(self) -> bool:
        return swapped_folder_exists(self.path / "checkpoint")

    def load_checkpoint(self) -> tuple[AdapterState, dict] | None:
        """The last checkpoint, None when the run has none yet; a damaged one raises naming the file."""
        folder = self.path / "checkpoint"
        restore_folder(folder)
        if not folder.exists():
            return None
        round_file, tensor_file = folder / "round.json", folder / "global.safetensors"
        for file in (round_file, tensor_file):
            if not file.is_file():
                raise RunDirError(f"checkpoint file {file} is missing; the checkpoint is damaged. "
                                  f"Start again with `fedlora run --overwrite --out {self.path}`")
        round_state = read_json(round_file, "checkpoint file")
        if not isinstance(round_state, dict) or not {"round", "best", "wall_s"} <= set(round_state):
            raise RunDirError(f"checkpoint file {round_file} is damaged: expected the keys round, best, wall_s")
        try:
            state = AdapterState.from_flat_dict(_read_tensors(tensor_file))
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as err:
            raise RunDirError(f"checkpoint file {tensor_file} is damaged ({type(err).__name__}: {err}). "
                              f"Start again with `fedlora run --overwrite --out {self.path}`") from None
        return state, round_state

    # -- end of run --------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_summary(self, summary: RunSummary) -> None:
        atomic_write_json(self.path / "summary.json", summary.to_json())
        self.set_status("complete")

    def read_summary(self) -> RunSummary:
        file = self.path / "summary.json"
        data = read_json(file, "run summary")
        try:
            return RunSummary.from_json(data)
        except (ValueError, TypeError) as err:
            raise RunDirError(f"{file} is damaged ({err})") from None


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    # safetensors sorts keys; the metadata keeps the order so sums over layers replay exactly.
    # (as bytes through our helper: safetensors' own save_file leaves the file owner-only)
    data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                             metadata={"order": json.dumps(list(tensors))})
    atomic_write_bytes(path, data)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as fh:
        order = json.loads(fh.metadata()["order"])
    tensors = load_file(str(path))
    return {k: tensors[k] for k in order}
