"""Safe output: atomic writes, folder swaps that survive a kill between their renames, the
umask's permissions (and owner-only private keys), folder paths that are files."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedlora import files
from fedlora.files import (
    atomic_open,
    atomic_write_text,
    check_folder_path,
    replacing_folder,
    restore_folder,
    swap_folder,
    swapped_folder_exists,
)


@pytest.fixture
def umask_027():
    files.umask.cache_clear()
    old = os.umask(0o027)
    yield
    os.umask(old)
    files.umask.cache_clear()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_version(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "v.txt").write_text(text)
    return folder


def test_umask_is_read_without_changing_it():
    files.umask.cache_clear()
    old = os.umask(0o037)
    try:
        assert files.umask() == 0o037
        assert os.umask(old) == 0o037  # still what was set
    finally:
        files.umask.cache_clear()


def test_atomic_files_and_temp_folders_get_the_umask_mode(tmp_path, umask_027):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert mode(tmp_path / "a.txt") == 0o640
    with replacing_folder(tmp_path / "out") as tmp:
        (tmp / "f").write_text("y")
    assert mode(tmp_path / "out") == 0o750
    with atomic_open(tmp_path / "key", "wb", private=True) as fh:
        fh.write(b"secret")
    assert mode(tmp_path / "key") == 0o600


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_kill_between_the_two_renames_keeps_the_previous_folder(tmp_path, monkeypatch):
    final = write_version(tmp_path / "checkpoint", "v1")
    new = write_version(tmp_path / ".new", "v2")
    real_replace = os.replace

    def killed_on_second_rename(src, dst):
        if Path(src) == new:
            raise KeyboardInterrupt  # stands for SIGKILL right after the first rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        swap_folder(new, final)
    monkeypatch.undo()
    assert not final.exists() and swapped_folder_exists(final)  # only the previous version is left
    restore_folder(final)
    assert (final / "v.txt").read_text() == "v1"


def test_swap_recovers_from_a_killed_swap_and_a_stale_previous(tmp_path):
    final = tmp_path / "adapter_best"
    write_version(tmp_path / ".adapter_best.old", "v1")  # a kill between the renames
    swap_folder(write_version(tmp_path / ".a", "v2"), final)
    assert (final / "v.txt").read_text() == "v2" and not (tmp_path / ".adapter_best.old").exists()
    write_version(tmp_path / ".adapter_best.old", "stale")  # a kill during the clean-up
    swap_folder(write_version(tmp_path / ".b", "v3"), final)
    assert (final / "v.txt").read_text() == "v3" and sorted(p.name for p in tmp_path.iterdir()) == ["adapter_best"]


def test_folder_paths_that_are_files_are_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"run folder .*file is a file, not a folder"):
        check_folder_path(tmp_path / "file", "run folder")
    with pytest.raises(NotADirectoryError, match=r"run folder .*file/sub/run lies under .*file, which is a file"):
        check_folder_path(tmp_path / "file" / "sub" / "run", "run folder")
    check_folder_path(tmp_path / "new" / "run", "run folder")  # not there yet: fine


def test_private_keys_stay_owner_only_and_certificates_follow_the_umask(tmp_path, umask_027):
    pytest.importorskip("cryptography")
    from fedlora.flower.certs import make_node_keys, make_tls_certs

    files.umask.cache_clear()
    os.umask(0o022)  # a permissive umask must not open up the keys
    tls = make_tls_certs(tmp_path)
    keys = make_node_keys(tmp_path, "node0")
    assert mode(tls.server_key) == mode(tmp_path / "ca.key") == mode(keys.private) == 0o600
    assert mode(tls.ca_cert) == mode(tls.server_cert) == mode(keys.public) == 0o644
