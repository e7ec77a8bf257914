"""HellaSwag items from local JSONL / parquet files or the Hugging Face hub, through one loader.

Two JSONL schemas are accepted: the original one (`ctx_a`, `ctx_b`, `ctx`, ...) and the
tag-stripped variant whose `ctx_a`/`ctx_b` are null (then `ctx` is used). Parquet files (the
hub's parquet conversion, or local copies) go through the same record validation, so every
source yields identical `Item`s for identical rows.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow.parquet as pq
from huggingface_hub import hf_hub_download, list_repo_files

from fedlora import config
from fedlora.config import DataConfig
from fedlora.hub import HubUnreachable, require_hub

NUM_CHOICES = 4
HUB_PARQUET_REVISION = "refs/convert/parquet"
# WikiHow markup; other bracketed text ("[www.site.org]") is real content and stays.
_WIKIHOW_TAGS = re.compile(r"\[(?:header|step|substeps|title)\]")


class DataError(ValueError):
    """A data file, row or hub split that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Item:
    context: str
    endings: tuple[str, str, str, str]
    label: int
    activity_label: str


@dataclass
class Pools:
    train: list[Item]
    eval: list[Item]
    source: str  # "local" or "hub"


# --------------------------------------------------------------------------- text cleaning
def clean_text(text: str) -> str:
    """' [title]' -> '. ', drop WikiHow tags, collapse whitespace (HellaSwag's preprocessing)."""
    text = text.replace(" [title]", ". ")
    text = _WIKIHOW_TAGS.sub("", text)
    return " ".join(text.split())


def clean_context(ctx_a: str | None, ctx_b: str | None, ctx: str | None) -> str:
    """Context text: `ctx_a + " " + ctx_b` when ctx_a is present, else `ctx`; then cleaned."""
    if ctx_a is not None:
        raw = ctx_a + " " + (ctx_b or "")
    elif ctx is not None:
        raw = ctx
    else:
        raise DataError("item has neither 'ctx_a' nor 'ctx'")
    return clean_text(raw)


# --------------------------------------------------------------------------- record validation
def _parse_label(value: Any, where: str) -> int:
    # The hub's parquet conversion stores labels as strings ("0".."3").
    parsed = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(parsed, bool) or not isinstance(parsed, (int, np.integer)) or not 0 <= parsed < NUM_CHOICES:
        raise DataError(f"{where}: bad label {value!r}; expected an integer 0..{NUM_CHOICES - 1}")
    return int(parsed)


def _parse_endings(value: Any, where: str) -> tuple[str, str, str, str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != NUM_CHOICES:
        got = f"{len(value)} entries" if isinstance(value, (list, tuple)) else type(value).__name__
        raise DataError(f"{where}: 'endings' must be a list of exactly {NUM_CHOICES} strings, got {got}")
    if not all(isinstance(e, str) for e in value):
        raise DataError(f"{where}: 'endings' must hold strings only, got {[type(e).__name__ for e in value]}")
    endings = tuple(clean_text(e) for e in value)
    # A blank choice cannot be scored (a decoder's mean log-probability over zero ending tokens
    # is undefined; an encoder would rank an empty text against real ones): it is broken data,
    # and one blank ending is enough to make the item's 4-way comparison meaningless.
    blank = [i for i, e in enumerate(endings) if not e]
    if blank:
        raise DataError(f"{where}: 'endings' {blank} {'is' if len(blank) == 1 else 'are'} empty or "
                        "whitespace only; every choice needs text")
    return endings  # type: ignore[return-value]


def item_from_record(record: Any, where: str) -> Item:
    """Validate one raw record (JSON object or parquet row); `where` names file and line/row."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("activity_label", "endings", "label"):
        if key not in record or record[key] is None:
            raise DataError(f"{where}: missing key {key!r}")
    ctx_a, ctx_b, ctx = record.get("ctx_a"), record.get("ctx_b"), record.get("ctx")
    if ctx_a is None and ctx is None:
        raise DataError(f"{where}: missing key 'ctx' (and 'ctx_a' is absent or null)")
    for key, val in (("ctx_a", ctx_a), ("ctx_b", ctx_b), ("ctx", ctx), ("activity_label", record["activity_label"])):
        if val is not None and not isinstance(val, str):
            raise DataError(f"{where}: {key!r} must be a string, got {type(val).__name__}")
    return Item(
        context=clean_context(ctx_a, ctx_b, ctx),
        endings=_parse_endings(record["endings"], where),
        label=_parse_label(record["label"], where),
        activity_label=record["activity_label"],
    )


# --------------------------------------------------------------------------- file readers
def read_jsonl(path: Path) -> list[Item]:
    items = []
    with open(path, "rb") as fh:  # decoded per line, so a bad byte is reported with its line
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})"
                                ) from None
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) carry no item
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            items.append(item_from_record(record, where))
    return items


def read_parquet(path: Path) -> list[Item]:
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    return [item_from_record(row, f"{path}: row {i}") for i, row in enumerate(table.to_pylist())]


def read_items(path: str | Path) -> list[Item]:
    """Read a `.jsonl` or `.parquet` file of HellaSwag items (errors name file and line/row)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        items = read_jsonl(path)
    elif suffix == ".parquet":
        items = read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; expected .jsonl or .parquet")
    if not items:
        raise DataError(f"{path}: contains no items")
    return items


# --------------------------------------------------------------------------- hub
def hub_split_files(hub_id: str, split: str, subset: str = "default") -> list[str]:
    """Parquet shards of one split in the hub's parquet conversion, in shard order."""
    try:
        require_hub(f"hub dataset {hub_id!r}")
    except HubUnreachable as err:
        raise DataError(f"{err}; or use local files (data.source=local, FEDLORA_DATA_DIR)") from None
    try:
        files = list_repo_files(hub_id, repo_type="dataset", revision=HUB_PARQUET_REVISION)
    except Exception as err:  # network / auth / missing repo: the cause is in the chained error
        raise DataError(
            f"cannot list the parquet conversion of hub dataset {hub_id!r} ({type(err).__name__}: {err}); "
            "use local files instead (data.source=local, FEDLORA_DATA_DIR)"
        ) from err
    parquet = [f for f in files if f.endswith(".parquet")]
    shards = sorted(f for f in parquet if f.startswith(f"{subset}/{split}/"))
    if not shards:
        available = sorted({"/".join(f.split("/")[:2]) for f in parquet if f.count("/") >= 2})
        raise DataError(f"hub dataset {hub_id!r} has no parquet files for split {split!r} "
                        f"(subset {subset!r}); available: {available}")
    return shards


def load_hub_split(hub_id: str, split: str, subset: str = "default") -> list[Item]:
    """Download (or reuse the cached) parquet shards of `hub_id`/`split` and read them."""
    items: list[Item] = []
    for filename in hub_split_files(hub_id, split, subset):
        try:
            local = hf_hub_download(hub_id, filename, repo_type="dataset", revision=HUB_PARQUET_REVISION)
        except Exception as err:
            raise DataError(f"cannot download {filename} of hub dataset {hub_id!r} "
                            f"({type(err).__name__}: {err})") from err
        items.extend(read_items(local))
    return items


# --------------------------------------------------------------------------- pools
def resolve_data_path(path: str) -> Path:
    """Absolute paths as given; relative ones under the shared data directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else config.data_dir() / p


def draw_subset(items: list[Item], size: int | None, seed: int, what: str) -> list[Item]:
    """`size` items drawn without replacement with `seed`, kept in pool order (None: all).

    Draws are prefixes of one permutation, so a smaller subset is contained in a larger one.
    """
    if size is None:
        return list(items)
    if size > len(items):
        raise DataError(f"{what}={size} exceeds the pool of {len(items)} items")
    chosen = np.sort(np.random.default_rng(seed).permutation(len(items))[:size])
    return [items[i] for i in chosen]


def _read_local_pools(cfg: DataConfig) -> tuple[list[Item], list[Item]]:
    train_path, eval_path = resolve_data_path(cfg.train_path), resolve_data_path(cfg.eval_path)
    if train_path.resolve() == eval_path.resolve():
        raise DataError(f"data.train_path and data.eval_path are the same file ({train_path}); "
                        "train and eval pools must be separate")
    for key, p in (("data.train_path", train_path), ("data.eval_path", eval_path)):
        if not p.is_file():
            raise DataError(f"{key}: file not found: {p} (data directory: {config.data_dir()}, "
                            "set FEDLORA_DATA_DIR to change it)")
    return read_items(train_path), read_items(eval_path)


def _read_hub_pools(cfg: DataConfig) -> tuple[list[Item], list[Item]]:
    if cfg.train_split == cfg.eval_split:
        raise DataError(f"data.train_split and data.eval_split are both {cfg.train_split!r}; "
                        "train and eval pools must be separate")
    return load_hub_split(cfg.hub_id, cfg.train_split), load_hub_split(cfg.hub_id, cfg.eval_split)


def _is_default_location(cfg: DataConfig) -> bool:
    """Whether the local files are the built-in defaults (no path written by the user)."""
    fields = DataConfig.model_fields
    return (config.data_dir_is_default() and cfg.train_path == fields["train_path"].default
            and cfg.eval_path == fields["eval_path"].default)


def _auto_source(cfg: DataConfig, log: Callable[[str], Any]) -> str:
    """`data.source: auto`: local files when present; the hub only when the default shared data
    folder is missing. A path the user wrote (in the config or FEDLORA_DATA_DIR) that does not
    exist is an error: a typo must not turn into a download."""
    paths = {"data.train_path": resolve_data_path(cfg.train_path), "data.eval_path": resolve_data_path(cfg.eval_path)}
    missing = {key: p for key, p in paths.items() if not p.is_file()}
    if not missing:
        log(f"data: local files found under {config.data_dir()}; using {cfg.train_path} and {cfg.eval_path}")
        return "local"
    key, path = next(iter(missing.items()))
    if not _is_default_location(cfg):
        raise DataError(f"{key}: file not found: {path} (data directory: {config.data_dir()}); data.source=auto "
                        "falls back to the hub only when the default shared data folder is missing, never for "
                        "a path that was set; fix the path, or set data.source=hub")
    log(f"data: local file {path} not found (default shared data folder); loading hub dataset {cfg.hub_id} "
        f"({cfg.train_split}/{cfg.eval_split})")
    return "hub"


def load_pools(cfg: DataConfig, seed: int, log: Callable[[str], Any] = print) -> Pools:
    """Train and eval pools with their subsets drawn from the config's sizes and seeds.

    The eval subset depends only on (eval file, eval_size, eval_seed or seed), never on the
    method, so every method of one seed is scored on the same items.
    """
    source = cfg.source
    if source == "auto":
        source = _auto_source(cfg, log)
    if source == "local":
        train_pool, eval_pool = _read_local_pools(cfg)
    else:
        if cfg.source == "hub":
            log(f"data: loading hub dataset {cfg.hub_id} ({cfg.train_split}/{cfg.eval_split})")
        train_pool, eval_pool = _read_hub_pools(cfg)
    eval_seed = cfg.eval_seed if cfg.eval_seed is not None else seed
    train = draw_subset(train_pool, cfg.train_size, seed, "data.train_size")
    evals = draw_subset(eval_pool, cfg.eval_size, eval_seed, "data.eval_size")
    log(f"data: {len(train)} of {len(train_pool)} train items (seed {seed}), "
        f"{len(evals)} of {len(eval_pool)} eval items (seed {eval_seed})")
    return Pools(train=train, eval=evals, source=source)
