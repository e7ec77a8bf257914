"""HellaSwag loading: cleaning, JSONL/parquet readers, error messages, hub path, pools."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedlora import config, data
from fedlora.config import DataConfig
from fedlora.data import DataError, Item, clean_context, load_hub_split, load_pools, read_items

VAL = "hellaswag/hellaswag_val.jsonl"
VAL_ORIGINAL = "hellaswag/hellaswag_val_1000_original.jsonl"
TRAIN = "hellaswag/hellaswag_train_3368.jsonl"


def _shared(rel: str) -> Path:
    path = config.data_dir() / rel
    if not path.is_file():
        where = "CI" if os.environ.get("CI") == "true" else "this machine"
        pytest.fail(f"shared data file {path} is missing on {where}; set FEDLORA_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="module")
def val_items() -> list[Item]:
    return read_items(_shared(VAL))


@pytest.fixture(scope="module")
def original_items() -> list[Item]:
    return read_items(_shared(VAL_ORIGINAL))


@pytest.fixture(scope="module")
def original_records() -> list[dict]:
    return [json.loads(line) for line in _shared(VAL_ORIGINAL).open()]


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _hub_table(records: list[dict]) -> pa.Table:
    """Rows in the schema of the hub's parquet conversion of Rowan/hellaswag (labels are strings)."""
    cols = ["ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type"]
    table = {c: [r.get(c) for r in records] for c in cols}
    table["label"] = [str(r["label"]) for r in records]
    return pa.table(table)


# --------------------------------------------------------------------------- cleaning
def test_clean_context_wikihow_markup():
    ctx_a = "[header] How to bake bread [title] Mix the flour. [step]   Add  water. [substeps] Stir."
    assert clean_context(ctx_a, "", None) == "How to bake bread. Mix the flour. Add water. Stir."


def test_clean_context_joins_ctx_a_ctx_b_and_prefers_them_over_ctx():
    assert clean_context("A man is sitting on a roof.", "he", "ignored") == "A man is sitting on a roof. he"
    assert clean_context(None, None, "  Two  men\n fight. ") == "Two men fight."
    # Only WikiHow tags go: other bracketed text is content.
    assert clean_context(None, None, "Visit [www.kiddio.org] now [step] go") == "Visit [www.kiddio.org] now go"
    with pytest.raises(DataError, match="ctx"):
        clean_context(None, None, None)


def test_original_schema_cleans_to_the_tag_stripped_release(original_records, original_items):
    """The 1000 untouched items, cleaned, equal the same items of the stripped release."""
    records = (json.loads(line) for line in _shared(VAL).open())
    stripped = {r["ind"]: r for r in records if r["ind"] is not None}
    n_tagged = 0
    for rec, item in zip(original_records, original_items, strict=True):
        ref = stripped[rec["ind"]]
        n_tagged += "[header]" in rec["ctx_a"]
        assert item.context == ref["ctx"]
        assert list(item.endings) == ref["endings"]
        assert item.label == ref["label"] and item.activity_label == ref["activity_label"]
    assert n_tagged == 87  # the WikiHow items really exercised the tag cleaning


# --------------------------------------------------------------------------- readers on real files
def test_read_shared_validation_file(val_items):
    assert len(val_items) == 10_042
    assert Counter(it.label for it in val_items) == {0: 2515, 1: 2485, 2: 2584, 3: 2458}
    assert len({it.activity_label for it in val_items}) == 192
    first = val_items[0]
    assert first == Item("A man is sitting on a roof. he",
                         ("is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                          "is holding a rubik's cube.", "starts pulling up roofing on a roof."),
                         3, "Roof shingle removal")
    assert all(it.context == " ".join(it.context.split()) and "[step]" not in it.context for it in val_items)


def test_read_shared_train_file():
    items = read_items(_shared(TRAIN))
    assert len(items) == 3368
    assert len({it.activity_label for it in items}) == 161
    assert items[0].context.startswith("Then, the man writes over the snow") and items[0].label == 3


def test_parquet_matches_jsonl(tmp_path, original_records, original_items):
    path = tmp_path / "val.parquet"
    pq.write_table(_hub_table(original_records[:300]), path)
    assert read_items(path) == original_items[:300]


# --------------------------------------------------------------------------- errors
def test_bad_json_line_names_file_and_line(tmp_path, original_records):
    path = _write_jsonl(tmp_path / "bad.jsonl", [original_records[0], original_records[1], "{not json"])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        read_items(path)


@pytest.mark.parametrize("key", ["label", "endings", "activity_label"])
def test_missing_key_named_with_line(tmp_path, original_records, key):
    broken = {k: v for k, v in original_records[1].items() if k != key}
    path = _write_jsonl(tmp_path / "miss.jsonl", [original_records[0], broken])
    with pytest.raises(DataError, match=rf"miss\.jsonl:2: missing key '{key}'"):
        read_items(path)


def test_missing_context_named(tmp_path, original_records):
    broken = dict(original_records[0], ctx_a=None, ctx_b=None, ctx=None)
    with pytest.raises(DataError, match=r"ctx\.jsonl:1: missing key 'ctx'"):
        read_items(_write_jsonl(tmp_path / "ctx.jsonl", [broken]))


@pytest.mark.parametrize("label", [4, -1, "7", "", 1.5, True])
def test_label_out_of_range(tmp_path, original_records, label):
    path = _write_jsonl(tmp_path / "lab.jsonl", [original_records[0], dict(original_records[1], label=label)])
    with pytest.raises(DataError, match=r"lab\.jsonl:2: bad label"):
        read_items(path)


def test_string_labels_accepted(tmp_path, original_records):
    path = _write_jsonl(tmp_path / "s.jsonl", [dict(original_records[0], label="2")])
    assert read_items(path)[0].label == 2


@pytest.mark.parametrize("endings", [["a", "b", "c"], ["a", "b", "c", "d", "e"], ["a", "b", 3, "d"], "abcd"])
def test_endings_must_be_four_strings(tmp_path, original_records, endings):
    path = _write_jsonl(tmp_path / "e.jsonl", [dict(original_records[0], endings=endings)])
    with pytest.raises(DataError, match=r"e\.jsonl:1: 'endings'"):
        read_items(path)


@pytest.mark.parametrize("endings", [["", "", "", ""], ["a", "  ", "c", "d"], ["a", "b", "c", "[title]"]])
def test_blank_endings_refused_with_file_and_line(tmp_path, original_records, endings):
    # A blank choice cannot be scored; one is enough to make the 4-way comparison meaningless.
    path = _write_jsonl(tmp_path / "blank.jsonl", [original_records[0], dict(original_records[1], endings=endings)])
    with pytest.raises(DataError, match=r"blank\.jsonl:2: 'endings' \[.*\] (is|are) empty or whitespace only"):
        read_items(path)


def test_blank_endings_refused_in_parquet(tmp_path, original_records):
    rows = [dict(r) for r in original_records[:3]]
    rows[2]["endings"] = ["", "", "", ""]
    path = tmp_path / "blank.parquet"
    pq.write_table(_hub_table(rows), path)
    with pytest.raises(DataError, match=r"blank\.parquet: row 2: 'endings' \[0, 1, 2, 3\] are empty"):
        read_items(path)


def test_invalid_utf8_names_file_and_line(tmp_path, original_records):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(original_records[0]).encode()
    bad = json.dumps(dict(original_records[1], ctx="caf\u00e9")).encode().replace(b"\\u00e9", b"\xe9")
    path.write_bytes(good + b"\n" + bad + b"\n")
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column \d+\)"):
        read_items(path)


def test_parquet_errors_name_row(tmp_path, original_records):
    rows = [dict(r) for r in original_records[:5]]
    rows[3]["label"] = 9
    path = tmp_path / "bad.parquet"
    pq.write_table(_hub_table(rows), path)
    with pytest.raises(DataError, match=r"bad\.parquet: row 3: bad label '9'"):
        read_items(path)
    no_label = tmp_path / "nolabel.parquet"
    pq.write_table(_hub_table(original_records[:2]).drop_columns(["label"]), no_label)
    with pytest.raises(DataError, match=r"nolabel\.parquet: row 0: missing key 'label'"):
        read_items(no_label)


def test_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_items(tmp_path / "absent.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        read_items(tmp_path / "x.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable parquet file"):
        read_items(tmp_path / "junk.parquet")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="contains no items"):
        read_items(tmp_path / "empty.jsonl")


# --------------------------------------------------------------------------- hub path
class FakeHub:
    """Serves parquet shards written by the test in place of the hub's network calls only."""

    def __init__(self, shards: dict[str, Path]):
        self.shards = shards
        self.downloads: list[tuple] = []
        self.listings: list[tuple] = []

    def list_repo_files(self, repo_id, *, revision=None, repo_type=None, token=None):
        self.listings.append((repo_id, revision, repo_type))
        return [".gitattributes", "README.md", *self.shards]

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, **kw):
        self.downloads.append((repo_id, filename, repo_type, revision))
        return str(self.shards[filename])


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, original_records):
    def shard(name, rows):
        path = tmp_path / name
        pq.write_table(_hub_table(rows), path)
        return path

    test_rows = [dict(r, label="") for r in original_records[:5]]  # the hub's test split is unlabelled
    hub = FakeHub({
        "default/validation/0001.parquet": shard("v1.parquet", original_records[600:1000]),
        "default/validation/0000.parquet": shard("v0.parquet", original_records[:600]),
        "default/train/0000.parquet": shard("t0.parquet", original_records[:50]),
        "default/test/0000.parquet": shard("x0.parquet", test_rows),
    })
    monkeypatch.setattr(data, "list_repo_files", hub.list_repo_files)
    monkeypatch.setattr(data, "hf_hub_download", hub.hf_hub_download)
    monkeypatch.setattr(data, "require_hub", lambda what: None)  # the fake hub is always reachable
    return hub


def test_hub_split_reads_all_shards_in_order(fake_hub, original_items):
    items = load_hub_split("Rowan/hellaswag", "validation")
    assert items == original_items
    assert fake_hub.listings == [("Rowan/hellaswag", "refs/convert/parquet", "dataset")]
    assert [d[1] for d in fake_hub.downloads] == ["default/validation/0000.parquet", "default/validation/0001.parquet"]
    assert all(d[2:] == ("dataset", "refs/convert/parquet") for d in fake_hub.downloads)


def test_hub_unknown_split_lists_available(fake_hub):
    with pytest.raises(DataError, match=r"no parquet files for split 'dev'.*default/train.*default/validation"):
        load_hub_split("Rowan/hellaswag", "dev")


def test_hub_unlabelled_split_is_rejected(fake_hub):
    with pytest.raises(DataError, match=r"row 0: bad label ''"):
        load_hub_split("Rowan/hellaswag", "test")


def test_hub_unreachable_gives_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(data, "list_repo_files", offline)
    monkeypatch.setattr(data, "require_hub", lambda what: None)  # the probe passes, the listing fails
    with pytest.raises(DataError, match=r"cannot list .*'Rowan/hellaswag'.*ConnectionError.*data.source=local"):
        load_hub_split("Rowan/hellaswag", "validation")


# --------------------------------------------------------------------------- pools
def _cfg(**kw) -> DataConfig:
    base = {"source": "local", "train_path": TRAIN, "eval_path": VAL, "train_size": 400, "eval_size": 100}
    return DataConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pools_42():
    return load_pools(_cfg(), seed=42, log=lambda m: None)


def test_load_pools_local_sizes_and_determinism(pools_42):
    assert pools_42.source == "local"
    assert len(pools_42.train) == 400 and len(pools_42.eval) == 100
    again = load_pools(_cfg(), seed=42, log=lambda m: None)
    assert again.train == pools_42.train and again.eval == pools_42.eval
    train_pool = read_items(_shared(TRAIN))
    positions = [train_pool.index(it) for it in pools_42.train]
    assert positions == sorted(positions) and len(set(positions)) == 400  # distinct, in pool order


def test_eval_subset_paired_and_seed_dependent(pools_42):
    # Another train size (as another configuration of the same seed would use) keeps the eval items.
    other = load_pools(_cfg(train_size=200), seed=42, log=lambda m: None)
    assert other.eval == pools_42.eval
    assert set(other.train) <= set(pools_42.train)  # subsets are prefixes of one permutation
    seed43 = load_pools(_cfg(), seed=43, log=lambda m: None)
    assert seed43.eval != pools_42.eval and seed43.train != pools_42.train
    shared = [load_pools(_cfg(eval_seed=7), seed=s, log=lambda m: None) for s in (42, 43)]
    assert shared[0].eval == shared[1].eval and shared[0].train != shared[1].train


def test_auto_prefers_local_and_logs_it():
    messages: list[str] = []
    pools = load_pools(_cfg(source="auto", train_size=50, eval_size=20), seed=1, log=messages.append)
    assert pools.source == "local"
    assert "local files found" in messages[0]


def test_auto_falls_back_to_hub_and_says_why(tmp_path, monkeypatch, fake_hub, original_items):
    # Only the default shared data folder (no FEDLORA_DATA_DIR, default paths) may be missing.
    monkeypatch.delenv("FEDLORA_DATA_DIR", raising=False)
    monkeypatch.setattr(config, "DEFAULT_DATA_DIR", tmp_path / "nowhere")
    messages: list[str] = []
    defaults = {"train_path": DataConfig().train_path, "eval_path": DataConfig().eval_path}
    pools = load_pools(_cfg(source="auto", train_size=30, eval_size=40, **defaults), seed=3, log=messages.append)
    assert pools.source == "hub"
    assert "not found" in messages[0] and "default shared data folder" in messages[0]
    assert "Rowan/hellaswag" in messages[0]
    assert len(pools.train) == 30 and len(pools.eval) == 40
    assert set(pools.train) <= set(original_items[:50])  # served train shard


@pytest.mark.parametrize("set_by", ["config", "env"])
def test_auto_never_turns_a_written_path_into_a_download(tmp_path, monkeypatch, fake_hub, set_by):
    # A typo in a path the user wrote (config key or FEDLORA_DATA_DIR) is an error, not a hub fallback.
    if set_by == "config":
        cfg = _cfg(source="auto", train_path=str(tmp_path / "trian.jsonl"))
        expected = r"data.train_path: file not found: .*trian\.jsonl.*never for a path that was set"
    else:
        monkeypatch.setenv("FEDLORA_DATA_DIR", str(tmp_path / "typo"))
        cfg = _cfg(source="auto")
        expected = r"data.train_path: file not found: .*typo.*never for a path that was set"
    with pytest.raises(DataError, match=expected):
        load_pools(cfg, seed=0, log=lambda m: None)
    assert fake_hub.listings == [] and fake_hub.downloads == []


def test_local_source_missing_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLORA_DATA_DIR", str(tmp_path))
    expected = r"data.train_path: file not found: .*hellaswag_train_3368.jsonl.*FEDLORA_DATA_DIR"
    with pytest.raises(DataError, match=expected):
        load_pools(_cfg(), seed=0, log=lambda m: None)


def test_subset_larger_than_pool_and_same_pools_rejected():
    with pytest.raises(DataError, match=r"data.train_size=5000 exceeds the pool of 3368"):
        load_pools(_cfg(train_size=5000), seed=0, log=lambda m: None)
    with pytest.raises(DataError, match="same file"):
        load_pools(_cfg(eval_path=TRAIN), seed=0, log=lambda m: None)
    with pytest.raises(DataError, match="both 'validation'"):
        load_pools(_cfg(source="hub", train_split="validation"), seed=0, log=lambda m: None)
