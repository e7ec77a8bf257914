"""Writing results safely: atomic file writes, folder swaps that survive a kill, permissions.

Every output is written to a temporary name in the target folder and renamed into place, so a
reader (or a resumed run) never sees a half-written file under its final name. Temporary files
and folders from `tempfile` are created owner-only (0600 / 0700); once renamed they would keep
that mode, so they are given the mode a plain `open()` / `mkdir()` would have had under the
user's umask: collaborators on a shared machine read results exactly as the umask allows.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


@functools.cache
def umask() -> int:
    """The process umask, read once without changing it where the kernel reports it."""
    try:  # os.umask can only be read by setting it, which races with other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def folder_mode() -> int:
    return 0o777 & ~umask()


def check_folder_path(path: str | Path, what: str) -> None:
    """Refuse a folder path that is a file or lies under a file, before anything is written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{what} {path} lies under {parent}, which is a file")
            return


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", private: bool = False) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename.

    `private=True` keeps the file owner-only (keys); otherwise it gets the umask's mode.
    On error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600 if private else file_mode())
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def temp_folder(parent: str | Path, name: str) -> Path:
    """An empty temporary folder in `parent` to fill and then move into place as `name`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp"))
    tmp.chmod(folder_mode())
    return tmp


def _previous(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def restore_folder(final: str | Path) -> None:
    """Finish a `swap_folder` that was killed between its two renames: bring the previous
    (complete) version back under the final name."""
    final = Path(final)
    previous = _previous(final)
    if not final.exists() and previous.is_dir():
        os.replace(previous, final)


def swapped_folder_exists(final: str | Path) -> bool:
    """Whether `final` exists, counting a previous version a killed swap left behind."""
    final = Path(final)
    return final.is_dir() or _previous(final).is_dir()


def swap_folder(tmp: Path, final: str | Path) -> None:
    """Replace the folder `final` by the complete folder `tmp`.

    POSIX cannot rename a folder over a non-empty one, so this takes two renames: `final` ->
    `.final.old`, then `tmp` -> `final`. A kill between them leaves no `final` but a complete
    `.final.old`, which `restore_folder` (called here first, and by readers) puts back; at no
    moment is there neither a current nor a previous version.
    """
    final = Path(final)
    previous = _previous(final)
    restore_folder(final)
    if previous.exists():  # left by a kill after the swap, before the clean-up: stale
        shutil.rmtree(previous)
    if final.exists():
        os.replace(final, previous)
    os.replace(tmp, final)
    shutil.rmtree(previous, ignore_errors=True)


@contextmanager
def replacing_folder(final: str | Path) -> Iterator[Path]:
    """A temporary folder to fill; when the block succeeds it replaces `final` (`swap_folder`),
    when it fails it is removed and `final` is left as it was."""
    final = Path(final)
    tmp = temp_folder(final.parent, final.name)
    try:
        yield tmp
        swap_folder(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
