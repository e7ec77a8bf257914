"""One process at a time per output folder (a run folder or a benchmark folder).

`folder_lock(folder)` holds an exclusive `fcntl.flock` on `folder/.lock` and writes its PID into
that file, so a second process is refused with the holder's PID. The kernel drops a flock when
the process holding it exits, however it exits (SIGKILL included): a lock left by a dead process
is free again by construction, with nothing to detect or clean up. The file itself stays:
deleting it while another process has it open would let two processes hold "the" lock.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hyperunmix.files import OutputFolderError, make_folder

LOCK_FILE = ".lock"


class FolderInUseError(OutputFolderError):
    """Another live process holds the folder's lock."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Create `folder` if needed and hold its lock until the block ends; yields the folder."""
    folder = make_folder(folder)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise FolderInUseError(
                f"{folder} is in use by another hyperunmix process (PID {holder}); "
                "wait for it to finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the flock
