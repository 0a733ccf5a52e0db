"""The stream I/O half of `RedisBackend`: one writer task sends grants and cancels in order
(each grant recorded in SQLite before it goes, retried while the server is away), one
reader task XREADs the hello stream and every worker's events stream and deletes what it
handled. A mixin, split from `bot.jobs.backends.redis` by concern; what each event means
is `redis_events`, who is online `redis_members`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from PIL import Image
from redis.exceptions import RedisError

from bot.jobs.backends.redis_events import Events
from bot.jobs.backends.redis_members import Grant, GrantFile
from pipeline import stream_codec as codec
from pipeline.prepare import fit_to_resolution, target_size
from pipeline.request import GenerationRequest
from pipeline.worker_protocol import BatchDone

log = logging.getLogger(__name__)

BLOCK_MS = 1000
READ_COUNT = 64
WRITE_BATCH = 64
"""Writes the writer takes at once: their grants are recorded in one transaction."""
READ_GATHER_S = 0.02
"""After a reply, the reader waits this long before reading again, so a hundred workers'
events (a few milliseconds apart) come in a few replies instead of one each: every read
names every worker's stream, and packing and parsing it costs more CPU than the event it
brings. An event waits at most this much longer; a full reply is followed at once."""
GRANTS_MAXLEN = 10_000
Write = tuple[str, str, dict[bytes, bytes], list[Any]]
"""(op, key, entry, files): "grant"/"xadd" an entry with its files, "del" a key, "srem"."""
BACKOFF_MAX_S = 5.0


class Streams(Events):
    """Mixin of `RedisBackend`: the reader and writer tasks (`start` runs them)."""

    _hello_id: bytes
    _hello_known: bool
    connected: bool

    @staticmethod
    def _cancel_entry(job_id: str, g: Grant) -> dict[bytes, bytes]:
        return {
            b"t": b"cancel",
            b"job": job_id.encode(),
            b"a": str(g.attempt).encode(),
            b"p": g.nonce.encode(),
        }

    def _send(
        self, key: str, entry: dict[bytes, bytes], files: list[tuple[bytes, str]] | None = None
    ) -> None:
        self._outbox.put_nowait(("xadd", key, entry, list(files or ())))

    async def _write_loop(self) -> None:
        """Write in order; retry while the server is away (a grant must not be lost). A
        grant is recorded in SQLite before it is sent, so no worker answers an unknown one."""
        while not self._closing:
            ops = [await self._outbox.get()]
            while not self._outbox.empty() and len(ops) < WRITE_BATCH:
                ops.append(self._outbox.get_nowait())
            await self._record_all(ops)
            writes = [(op, key, entry, files[0] if op == "grant" else files)
                      for op, key, entry, files in ops if op != "forget"]  # fmt: skip
            if not writes:
                continue
            try:
                await self._write_all(writes)
            except (RedisError, OSError) as exc:
                log.warning("writing %d entries failed (%s); sending them one by one",
                            len(writes), exc)  # fmt: skip
                for write in writes:
                    await self._write(write)

    async def _write_all(self, writes: list[Write]) -> None:
        """The writes in one round trip, their files read in one thread hop (a hundred
        workers' grants come a few a pass); raises what the server said."""
        assert self._r is not None
        entries = await asyncio.to_thread(_with_files, writes)
        pipe = self._r.pipeline(transaction=False)
        for (op, key, _, files), entry in zip(writes, entries, strict=True):
            if op == "del":
                pipe.delete(key)
            elif op == "srem":
                pipe.srem(key, *files)
            else:
                pipe.xadd(key, entry, maxlen=GRANTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
        await pipe.execute()

    async def _write(self, write: Write) -> None:
        """One write, retried until it is done or the backend closes (a grant sent twice
        is taken once: its number)."""
        delay = 0.1
        while not self._closing:
            try:
                await self._write_all([write])
                break
            except (RedisError, OSError) as exc:
                log.warning("writing to %s failed (%s); retrying in %.1f s", write[1], exc, delay)
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)

    async def _record_all(self, ops: list[Write]) -> None:
        """Record the grants among `ops` in one transaction (with the rows of jobs that
        ended, `forget`), before any of them is sent. Forgetting never concerns a grant of
        the same batch: a job ends only after its grant was sent and answered."""
        if self._ledger is None:
            return
        grants = [record for op, _, _, values in ops if op == "grant" for record in values[1]]
        try:
            for op, _, _, values in ops:
                if op == "forget":
                    await self._ledger.forget(values)
            if grants:
                await self._ledger.record(grants)
        except Exception:  # the grants still go out; only their adoption after a restart
            log.exception("could not record the grants of %s in the database", grants)

    # -- reading ----------------------------------------------------------------------
    async def _read_loop(self) -> None:
        delay, down = 0.1, False
        while not self._closing:
            try:
                assert self._r is not None
                if not self._hello_known:  # older hellos: their workers are found by key
                    newest = await self._r.xrevrange(self.keys.hello, count=1)
                    self._hello_id = newest[0][0] if newest else b"0-0"
                    self._hello_known = True
                streams: dict[Any, Any] = {self.keys.hello: self._hello_id}
                for wid in self._workers:
                    streams[self.keys.events(wid)] = self._last_ids.get(wid, b"0-0")
                reading = set(self._workers)
                reply = await self._r.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                if not down:
                    log.warning("lost the server (%s); reconnecting", exc)
                down, self.connected = True, False
                await asyncio.sleep(delay)
                delay = min(BACKOFF_MAX_S, delay * 2)
                continue
            if down:
                log.info("server reachable again; re-sending unacknowledged grants")
                self._after_outage()
            down, delay, self.connected = False, 0.1, True
            handled: dict[str, list[bytes]] = {}
            full = False
            for stream, entries in reply or ():
                name = stream.decode() if isinstance(stream, bytes) else stream
                if len(entries) >= READ_COUNT:
                    reading.discard(name.rsplit(":", 1)[-1])  # more may wait there
                    full = True
                for entry_id, entry in entries:
                    if name != self.keys.hello:
                        handled.setdefault(name, []).append(entry_id)
                    try:
                        await self._on_entry(name, entry_id, entry)
                    except Exception:
                        log.exception("could not handle %s entry %r", name, entry_id)
            if handled:
                await self._delete_handled(handled)
            self._drained |= reading & set(self._workers)  # read to the end once at least
            if reply and not full:
                await asyncio.sleep(READ_GATHER_S)

    async def _on_entry(self, stream: str, entry_id: bytes, entry: codec.Fields) -> None:
        if stream == self.keys.hello:
            self._hello_id = entry_id
            self._register(codec.loads(entry.get(b"hello")) or {})
            return
        wid = stream.rsplit(":", 1)[-1]
        self._last_ids[wid] = entry_id
        await self._on_event(wid, entry)

    async def _delete_handled(self, handled: dict[str, list[bytes]]) -> None:
        """Delete the events just handled, every stream's in one round trip (PNG bytes do
        not stay on the server; the read position is kept here, so a failure costs only
        space until the worker's stream is trimmed or deleted)."""
        with contextlib.suppress(RedisError, OSError):
            assert self._r is not None
            pipe = self._r.pipeline(transaction=False)
            for stream, ids in handled.items():
                pipe.xdel(stream, *ids)
            await pipe.execute()

    def _after_outage(self) -> None:
        now = time.monotonic()
        for w in self._workers.values():
            w.last_seen = w.last_event = now  # nobody could beat meanwhile
            for seq in sorted(w.unacked):
                entry, files, _ = w.unacked[seq]
                self._send(self.keys.grants(w.id), entry, files)
        self._events.put_nowait(BatchDone(()))


def _files_of(request: GenerationRequest, resolution: int | None) -> list[GrantFile]:
    """The request's input files (image, mask…) to send with the grant, each with the size
    it travels at: an img2img input at the worker's working size (`resolution`: the worker
    would scale it there itself, so its pixels are the same and the grant is a fraction of a
    full-size upload); any other file (an inpainting's photo, its mask) as stored, since
    those jobs work at full resolution."""
    fits = request.mode == "img2img" and request.start is None
    out = []
    for f in fields(request):
        value = getattr(request, f.name)
        if f.name.endswith("_path") and f.name != "output_path" and value:
            fit = resolution if fits and f.name == "image_path" else None
            out.append((f"file:{request.job_id}:{f.name}".encode(), str(value), fit))
    return out


def _with_files(writes: list[Write]) -> list[dict[bytes, bytes]]:
    """Each stream entry of `writes` with its files' bytes added (`_read`); blocking."""
    out = []
    for op, _, entry, files in writes:
        full = dict(entry)
        for name, path, fit in files if op not in ("del", "srem") else ():
            data = _read(path, fit)
            if data is not None:
                full[name] = data
        out.append(full)
    return out


def _read(path: str, fit: int | None = None) -> bytes | None:
    """The file's bytes; with `fit`, the picture at the working size (see `_fitted`)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        log.warning("input file of a grant is missing: %s", Path(path).name)
        return None
    if fit is None:
        return data
    try:
        return _fitted(data, fit)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return data  # the worker finds it unreadable and says so, as for a local job


def _fitted(data: bytes, resolution: int) -> bytes:
    """The picture scaled as the worker scales it (`fit_to_resolution`), as a lossless PNG:
    the worker's own scaling then leaves it as it is, so its pixels are the same."""
    with Image.open(io.BytesIO(data)) as src:
        if target_size(*src.size, resolution) == src.size:
            return data  # the usual case: read from the header, nothing decoded
        fitted = fit_to_resolution(src.convert("RGB"), resolution)
    out = io.BytesIO()
    fitted.save(out, format="PNG", compress_level=1)
    return out.getvalue()
