"""Send child processes' logs to a file, so the report on the terminal stays readable."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def stderr_to(path: Path | None) -> Iterator[None]:
    """Point file descriptor 2 at `path` (appending) while the block runs.

    A process spawned inside the block inherits that descriptor, so the worker's and the
    direct loop's logs (per-batch lines, library warnings) land in the file for their whole
    life, while this process's own stderr is restored at once. None: leave stderr alone.
    """
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
