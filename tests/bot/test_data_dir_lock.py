"""One bot per DATA_DIR: the lock is held by a real second process, and a crash (kill -9)
leaves nothing stale. (A second real bot stopping at start: tests/e2e/test_data_dir_lock_e2e.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.jobs.data_dir_lock import LOCK_FILE, DataDirLock, DataDirLocked
from bot.store.db import StoreError

HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from bot.jobs.data_dir_lock import DataDirLock\n"
    "DataDirLock(Path(sys.argv[1])).acquire()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def hold_in_another_process(data_dir: Path) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data_dir)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_naming_the_first_until_it_is_killed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    other = hold_in_another_process(data)
    try:
        lock = DataDirLock(data)
        with pytest.raises(DataDirLocked) as info:
            lock.acquire()
        message = str(info.value)
        assert f"pid {other.pid} on {socket.gethostname()}" in message
        assert str(data) in message and "\n" not in message
        assert isinstance(info.value, StoreError)  # `python -m bot` prints it as one line
        assert not lock.held
    finally:
        os.kill(other.pid, signal.SIGKILL)  # a crash: no release, no cleanup
        other.wait()
    lock.acquire()  # the kernel dropped the dead holder's lock
    assert lock.held and f"pid {os.getpid()} " in (data / LOCK_FILE).read_text()
    lock.release()
    again = DataDirLock(data)
    again.acquire()  # released cleanly: the next bot starts at once
    again.release()
