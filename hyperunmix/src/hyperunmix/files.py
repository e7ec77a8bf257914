"""Output files and folders: written whole or not at all, with the permissions the user expects.

Every file goes to a temporary file beside its target and is renamed into place, so a reader (or a
resumed benchmark) never sees half a file. `tempfile.mkstemp` creates that file readable by its
owner only (0600); `atomic_write` gives it the mode a plain `open()` would, 0666 minus the umask,
so collaborators on a shared machine can read results when the umask lets them.
"""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path


class OutputFolderError(ValueError):
    """An output folder cannot be used (a file is in the way, it cannot be created, it is busy)."""


@functools.lru_cache(maxsize=1)
def user_umask() -> int:
    """The process umask, read once. Linux reports it in /proc/self/status; elsewhere the only way to
    read it is to set it, which for an instant applies the set value to files other threads create,
    so the fallback sets the most restrictive value for that instant."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def make_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents); a file in the way is named in an OutputFolderError."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise OutputFolderError(f"output folder {folder} {where}, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(f"cannot create output folder {folder}: {err.strerror}") from err
    return folder


def atomic_write(path: str | Path, write, mode: str = "wb") -> Path:
    """Call write(handle) on a temp file beside `path`, then rename: no half-written files."""
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(handle.fileno(), 0o666 & ~user_umask())
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
