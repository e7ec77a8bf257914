"""Folder locks: a second process is refused with the holder's PID; a lock left by a killed
process is taken over."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hyperunmix.cli import app
from hyperunmix.locks import LOCK_FILE, FolderInUseError, folder_lock

HOLD = "import sys, time\nfrom hyperunmix.locks import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
       "    print('locked', flush=True)\n    time.sleep(120)\n"


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path / 'bench'."""
    folder = tmp_path / "bench"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield folder, process
    finally:
        process.kill()
        process.wait()


def test_second_process_refused_with_the_holders_pid(holder):
    folder, process = holder
    with pytest.raises(FolderInUseError, match=rf"in use by another hyperunmix process \(PID {process.pid}\)"):
        with folder_lock(folder):
            pass
    result = CliRunner().invoke(app, ["bench", "--datasets", "synthetic", "--methods", "vca-fcls", "--seeds", "0",
                                      "--out", str(folder), "--figures", "none"])
    assert result.exit_code == 2
    assert f"error: {folder} is in use by another hyperunmix process (PID {process.pid})" in result.output
    assert not (folder / "runs").exists()


def test_lock_of_a_killed_process_is_taken_over(holder):
    folder, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (folder / LOCK_FILE).read_text().strip() == str(process.pid)  # stale PID still in the file
    with folder_lock(folder):
        assert (folder / LOCK_FILE).read_text().strip() != str(process.pid)


def test_lock_released_when_the_block_ends(tmp_path):
    with folder_lock(tmp_path / "run"):
        with pytest.raises(FolderInUseError):
            with folder_lock(tmp_path / "run"):  # a second open file description conflicts too
                pass
    with folder_lock(tmp_path / "run"):
        pass
