"""Running a bench section in a process of its own: `python -m bench.SECTION ARGS`, whose
last stdout line is the section's JSON. The bench process (the bot side) so never imports
torch, and a section's CPU time is its own."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


async def child_json(module: str, *args: str) -> dict[str, Any]:
    """Run `python -m module args…` and return its last stdout line, parsed; a failure
    raises naming the module, its exit status and the last lines it wrote to stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{module} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))
