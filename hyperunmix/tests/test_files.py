"""Output files and folders: the user's umask decides who can read results, and nothing
half-written is left behind."""
from __future__ import annotations

import os
import stat

import pytest

from hyperunmix.datasets import load_dataset
from hyperunmix.files import OutputFolderError, atomic_write, make_folder, user_umask
from hyperunmix.run import run_method


@pytest.fixture
def umask():
    """Set a umask for one test (and forget the cached one before and after)."""
    previous = os.umask(0o022)
    os.umask(previous)

    def use(mask: int) -> None:
        os.umask(mask)
        user_umask.cache_clear()

    yield use
    os.umask(previous)
    user_umask.cache_clear()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o002, 0o022, 0o077])
def test_run_files_and_folders_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert user_umask() == mask
    out = tmp_path / "runs" / "one"
    run_method(load_dataset("synthetic"), "vca-fcls", 0, out_dir=out)
    files = [p for p in out.iterdir() if p.is_file()]
    assert {"estimates.mat", "metrics.json", "config.yaml", "abundances.png"} <= {p.name for p in files}
    assert {p.name: mode(p) for p in files} == {p.name: 0o666 & ~mask for p in files}
    assert mode(out) == mode(out.parent) == 0o777 & ~mask


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.csv"
    atomic_write(target, lambda handle: handle.write("old\n"), mode="w")

    def broken(handle):
        handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken, mode="w")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary file left


def test_output_folder_that_is_a_file_or_under_one_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputFolderError, match=r"notes.txt is a file, not a folder"):
        make_folder(tmp_path / "notes.txt")
    with pytest.raises(OutputFolderError, match=r"deep lies under .*notes.txt, which is a file"):
        make_folder(tmp_path / "notes.txt" / "sub" / "deep")
