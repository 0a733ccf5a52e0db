"""Keeps the images under DATA_DIR (inputs/ and outputs/) within STORAGE_MAX_GB.

When the stored images pass the cap, the oldest files (by modification time; each is written
once) are deleted first until the total is back under it. Never deleted: the input of a job
that waits or runs, and any file younger than `min_age_s`, which covers an upload saved a
moment before its job row exists and a result still being sent to Discord.

A pass scans the two folders and deletes in a worker thread, so the event loop never blocks
on the disk; passes asked for while one runs are folded into one more pass. What a pass
deleted is handed to `on_pruned` (the gallery flags those entries as pruned).

An inpaint mask (`inputs/NAME.mask.png`) counts as part of its input: it is never chosen on
its own, and goes when its input goes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bot.inpaint_masks import input_of, is_mask, remove_with_input
from bot.store.db import ACTIVE_STATES, Store

log = logging.getLogger(__name__)

STORED_DIRS = ("inputs", "outputs")
BYTES_PER_GB = 1_000_000_000
DEFAULT_MIN_AGE_S = 15 * 60.0

PrunedHook = Callable[[list[str]], Awaitable[None]]


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to DATA_DIR, with forward slashes as in the jobs table
    size: int
    mtime: float


@dataclass
class PruneResult:
    removed: list[str] = field(default_factory=list)
    freed: int = 0
    total: int = 0  # bytes stored after the pass


PARTIAL_SUFFIXES = (".part", ".tmp")
"""Names of files being written (temporary name, renamed into place when complete)."""


def max_bytes(storage_max_gb: float) -> int:
    return int(storage_max_gb * BYTES_PER_GB)


def write_file(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` under a temporary `.part` name, then rename it into place:
    nobody reads half a file, and any failure (a full disk, a rename refused) removes the
    `.part` before the error goes on. Blocking: run it in a thread."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sweep_partial_files(data_dir: Path) -> list[str]:
    """Delete files a crash left half-written (`*.part`, `*.tmp`) under the stored folders;
    returns their paths. Run at start, before anything writes there: one bot owns a
    DATA_DIR. Blocking: run it in a thread."""
    swept: list[str] = []
    for folder in STORED_DIRS:
        try:
            entries = list(os.scandir(data_dir / folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.endswith(PARTIAL_SUFFIXES) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("could not remove the partial file %s: %s", entry.name, exc)
                    continue
                swept.append(f"{folder}/{entry.name}")
    if swept:
        log.info("removed %d partial files left by an earlier stop", len(swept))
    return swept


def scan(data_dir: Path) -> list[StoredFile]:
    """Every regular file directly under the stored folders."""
    found: list[StoredFile] = []
    for folder in STORED_DIRS:
        try:
            entries = list(os.scandir(data_dir / folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append(StoredFile(f"{folder}/{entry.name}", st.st_size, st.st_mtime))
    return with_masks_folded(found)


def with_masks_folded(files: list[StoredFile]) -> list[StoredFile]:
    """Each mask's size added to its input's, the mask itself left out (a mask whose input
    is gone stands alone, so it can still be pruned)."""
    paths = {f.path for f in files}
    extra: dict[str, int] = {}
    rest: list[StoredFile] = []
    for f in files:
        if is_mask(f.path) and input_of(f.path) in paths:
            extra[input_of(f.path)] = extra.get(input_of(f.path), 0) + f.size
        else:
            rest.append(f)
    return [replace(f, size=f.size + extra[f.path]) if f.path in extra else f for f in rest]


def choose_victims(
    files: Iterable[StoredFile],
    limit: int,
    protected: Collection[str],
    *,
    min_age_s: float,
    now: float,
) -> list[StoredFile]:
    """The oldest files to delete so the rest fit in `limit` bytes (fewer if too much is
    protected or too young)."""
    files = sorted(files, key=lambda f: (f.mtime, f.path))
    total = sum(f.size for f in files)
    victims: list[StoredFile] = []
    for f in files:
        if total <= limit:
            break
        if f.path in protected or now - f.mtime < min_age_s:
            continue
        victims.append(f)
        total -= f.size
    return victims


def prune_files(
    data_dir: Path, limit: int, protected: Collection[str], *, min_age_s: float, now: float
) -> PruneResult:
    """One pass over the disk (blocking: run it in a thread)."""
    files = scan(data_dir)
    result = PruneResult(total=sum(f.size for f in files))
    for f in choose_victims(files, limit, protected, min_age_s=min_age_s, now=now):
        try:
            (data_dir / f.path).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not prune %s: %s", f.path, exc)
            continue
        if not is_mask(f.path):
            try:
                remove_with_input(data_dir, f.path)
            except OSError as exc:
                log.warning("could not prune the mask of %s: %s", f.path, exc)
        result.removed.append(f.path)
        result.freed += f.size
        result.total -= f.size
    return result


async def protected_paths(store: Store) -> set[str]:
    """Files that waiting and running jobs still need."""
    marks = ", ".join("?" for _ in ACTIVE_STATES)
    cursor = await store.db.execute(
        f"SELECT input_path, output_path FROM jobs WHERE state IN ({marks})", ACTIVE_STATES
    )
    paths: set[str] = set()
    for row in await cursor.fetchall():
        paths.update(p for p in (row[0], row[1]) if p)
    return paths


class Pruner:
    """Runs pruning passes, one at a time, off the event loop."""

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        limit: int,
        *,
        min_age_s: float = DEFAULT_MIN_AGE_S,
        on_pruned: PrunedHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.limit = limit
        self.min_age_s = min_age_s
        self.on_pruned = on_pruned
        self.clock = clock
        self._lock = asyncio.Lock()
        self._wanted = False

    async def run(self) -> PruneResult | None:
        """Prune now; if a pass is already running, make it go once more and return None."""
        self._wanted = True
        if self._lock.locked():
            return None
        async with self._lock:
            result: PruneResult | None = None
            while self._wanted:
                self._wanted = False
                result = await self._pass()
            return result

    async def _pass(self) -> PruneResult:
        protected = await protected_paths(self.store)
        result = await asyncio.to_thread(
            prune_files,
            self.data_dir,
            self.limit,
            protected,
            min_age_s=self.min_age_s,
            now=self.clock(),
        )
        if result.removed:
            log.info(
                "pruned %d stored images (%.1f MB) to stay under %.2f GB",
                len(result.removed),
                result.freed / 1e6,
                self.limit / BYTES_PER_GB,
            )
            if self.on_pruned is not None:
                await self.on_pruned(result.removed)
        if result.total > self.limit:
            log.warning(
                "stored images take %.2f GB, over the %.2f GB cap; the rest is in use or recent",
                result.total / BYTES_PER_GB,
                self.limit / BYTES_PER_GB,
            )
        return result
