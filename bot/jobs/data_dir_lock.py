"""One scheduler per DATA_DIR: a second bot on the same DATA_DIR stops at start.

Two bots on one DATA_DIR would each rebuild the fair queue from the same SQLite rows and run
every waiting job twice (and SQLite's own locks last one transaction, so they never notice).
The bot holds an exclusive `flock` on `DATA_DIR/scheduler.lock` while it runs, and writes
who it is into the file; a second bot fails to take it and stops with one line naming the
holder. The kernel drops the lock when the process ends, however it ends, so a crash or a
kill -9 leaves nothing stale behind. (On a network filesystem flock may not reach other
hosts: give each bot its own DATA_DIR there. The Valkey backend has its own lock per
namespace, `bot.jobs.backends.redis_lock`.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from bot.store.db import StoreError

LOCK_FILE = "scheduler.lock"


class DataDirLocked(StoreError):
    """Another bot holds this DATA_DIR; the message names it (printed as the bot's last line)."""


class DataDirLock:
    """The exclusive lock a running bot holds on its DATA_DIR. `acquire` at start, `release`
    at shutdown (or just exit: the kernel releases it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise `DataDirLocked` naming the holder (pid and host)."""
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another process holds it
            holder = _read(fd) or "another process"
            os.close(fd)
            raise DataDirLocked(
                f"Another bot is already running on DATA_DIR {self.data_dir} ({holder}). "
                "One bot schedules the jobs of one DATA_DIR: stop that one, or give this "
                "bot a DATA_DIR of its own."
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    return ""
