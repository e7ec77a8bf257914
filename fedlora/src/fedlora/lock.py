"""One writer per run or sweep folder: an exclusive `flock` on `<folder>/.lock`.

The lock file holds the PID of the process that owns the folder, so a refused second process
can say who holds it. Staleness is handled by construction: the kernel releases a flock when
the file descriptor is closed, which includes the holder's death (even by SIGKILL), so a lock
file left behind by a dead process is simply free to take. The file itself is never removed:
unlinking a lock file while another process waits on it would let two processes "hold" it.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fedlora.files import check_folder_path, file_mode

LOCK_NAME = ".lock"


class FolderBusy(RuntimeError):
    """Another live process is writing this folder."""


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    pid = os.read(fd, 32).decode(errors="replace").strip()
    return f"process {pid}" if pid.isdigit() else "another process"


@contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold the folder's lock (creating the folder if needed) for the duration of the block."""
    folder = Path(folder)
    check_folder_path(folder, what)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())  # O_CLOEXEC by default: not inherited by exec'd children
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"{what} {folder} is in use by {_holder(fd)} (lock file {path}); "
                             "wait for it to finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        os.close(fd)  # releases the lock
