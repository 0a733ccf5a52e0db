"""Keep freed tensor memory in the worker process instead of handing it back to the OS.

glibc's malloc serves big blocks with mmap and returns them with munmap, and trims the top
of the heap on free; its thresholds move with what the process did so far. A denoising
loop frees and reallocates the same activation buffers at every step, so depending on the
order of its first allocations a worker could spend a sixth of its CPU time in the kernel
zeroing freshly faulted pages: on the dev VM some worker processes ran the same 16 jobs in
3.5 s with 4.3 s of system time, others in 2.9 s with 1 s (measured with psutil). Fixing
both thresholds high makes every worker the fast one (system time ≈ 0.5 s, 2.3–2.8 s).
PyTorch's CPU tuning guides reach the same end by preloading jemalloc or tcmalloc; an
operator who does that (LD_PRELOAD) or sets GLIBC_TUNABLES keeps their choice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
"""glibc's ceiling for the mmap threshold on 64-bit: blocks below it come from the heap."""
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
"""Free memory at the heap's top is returned to the OS only past this much."""


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; whether they were set."""
    if not sys.platform.startswith("linux"):
        return False
    if os.environ.get("LD_PRELOAD") or os.environ.get("GLIBC_TUNABLES"):
        return False  # the operator chose an allocator or tunables
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    log.debug("malloc thresholds fixed: %s", ok)
    return ok
