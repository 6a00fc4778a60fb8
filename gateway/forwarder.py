"""One forwarder per sink: buffer cursor -> sink, with one retry policy for all sinks.

The cursor advances only after the sink accepted the batch, so delivery is at least
once; InfluxDB-style stores overwrite a point with the same series and timestamp, so a
resend after a crash or timeout does not duplicate data. Each forwarder is its own task:
a sink that is down or slow never holds up another sink or the drivers.

A delivered batch whose acknowledgement cannot be written (the disk is full, the file
system went read-only) must not restart the forwarder: that would resend the same batch
forever while nothing is pruned. The delivered position is kept in memory, delivery goes
on from there, and the ack is retried after every batch and every idle check until the
buffer takes it; a restart in between resends from the last recorded cursor (at least
once, as always).
"""

from __future__ import annotations

import asyncio
import logging
import re

from gateway.aio import wait_event
from gateway.backoff import Backoff
from gateway.buffer import AsyncBuffer, Batch
from gateway.errors import (
    BufferFailure,
    SinkAuthError,
    SinkRejected,
    SinkTooLarge,
    SinkUnavailable,
)
from gateway.problems import ProblemLog
from gateway.sinks.base import Sink, SinkConfigBase
from gateway.stats import GatewayStats

log = logging.getLogger("iotgw.forwarder")

RETRY_AFTER_CAP = 600.0
"""Longest a server's Retry-After is obeyed; a misconfigured proxy must not park a sink
for a day."""

REFUSAL_SUMMARY = 600.0
"""A store that keeps refusing one kind of line (a type conflict) is logged once, then
summarised at most this often; every refused line is counted in the sink's stats."""

STOP_GRACE = 2.0
"""Seconds a stopping forwarder waits for a write already under way (see _deliver_batch)."""

IDLE_RECHECK = 1.0
"""Seconds between buffer checks when no commit notification arrives (a safety net)."""


class Forwarder:
    def __init__(self, sink: Sink, config: SinkConfigBase, buffer: AsyncBuffer,
                 new_data: asyncio.Event, stats: GatewayStats) -> None:
        self.name = config.sink_name
        self._sink = sink
        self._config = config
        self._buffer = buffer
        self._new_data = new_data
        self._stats = stats.sink(self.name)
        self._problems = ProblemLog(log)
        self._backoff = Backoff(base=0.5, cap=config.retry_max)
        self._unacked: int | None = None
        """Last chunk id the sink stored whose ack the buffer could not record yet."""

    async def run(self) -> None:
        await self._sink.open()
        try:
            await self._loop()
        finally:
            await self._sink.close()

    async def _loop(self) -> None:
        limit = self._config.batch_lines
        while True:
            batch = await self._buffer.read(self.name, limit, self._unacked)
            if batch is None:
                self._new_data.clear()
                if self._unacked is not None:
                    await self._ack(self._unacked)
                batch = await self._buffer.read(self.name, limit, self._unacked)
                if batch is None:
                    await wait_event(self._new_data, IDLE_RECHECK)
                    continue
            delay = await self._deliver_batch(batch)
            if delay is not None:
                await asyncio.sleep(delay)

    async def _deliver_batch(self, batch: Batch) -> float | None:
        """Deliver and record one batch. A stop that arrives while the sink is writing or
        the buffer is recording the delivery lets both finish (up to ``STOP_GRACE``):
        otherwise a clean stop would send the same batch again at the next start
        (harmless for InfluxDB, a duplicate for the file sink)."""
        work = asyncio.ensure_future(self._deliver_and_record(batch))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await asyncio.shield(work)
            except (TimeoutError, Exception):  # stopping anyway: it is sent again later
                work.cancel()
            raise

    async def _deliver_and_record(self, batch: Batch) -> float | None:
        delay = await self._try_deliver(batch.payload)
        if delay is None:
            await self._delivered(batch)
        return delay

    async def _delivered(self, batch: Batch) -> None:
        self._stats.sent_lines += batch.lines
        self._stats.sent_batches += 1
        await self._ack(batch.last_id)

    async def _ack(self, last_id: int) -> None:
        """Record delivery up to ``last_id``; if the buffer cannot, remember it instead."""
        key = f"ack:{self.name}"
        try:
            await self._buffer.ack(self.name, last_id)
        except BufferFailure as exc:
            self._unacked = last_id
            self._failed(key, "retrying", f"sink {self.name}: delivered up to chunk {last_id} "
                         f"but the buffer cannot record it ({exc}); delivery goes on, the "
                         "position is kept in memory and the ack retried")
            return
        if self._unacked is not None:
            self._unacked = None
            self._stats.state = "ok"
            self._problems.recovered(key, f"sink {self.name}: the buffer records its "
                                     "deliveries again (pruning resumes)")

    async def _try_deliver(self, payload: bytes) -> float | None:
        """None when the batch is done with (stored, or bad lines dropped); otherwise the
        seconds to wait before retrying the same batch."""
        key = f"sink:{self.name}"
        try:
            await self._deliver(payload)
        except SinkAuthError as exc:
            self._failed(key, "failed", f"sink {self.name}: {exc}; buffering and retrying "
                         f"every {self._config.auth_retry:g}s until this is fixed")
            return self._config.auth_retry
        except SinkUnavailable as exc:
            wait = self._backoff.next()
            if exc.retry_after is not None:
                wait = max(wait, min(exc.retry_after, RETRY_AFTER_CAP))
            self._failed(key, "retrying", f"sink {self.name} unavailable: {exc}; buffering "
                         "and retrying with backoff")
            return wait
        self._backoff.reset()
        self._stats.state = "ok" if self._unacked is None else "retrying"
        self._problems.recovered(key, f"sink {self.name} is delivering again")
        return None

    def _failed(self, key: str, state: str, message: str) -> None:
        self._stats.state = state
        self._stats.errors += 1
        self._stats.last_error = message
        self._problems.report(key, message)

    async def _deliver(self, payload: bytes) -> None:
        try:
            await self._sink.write(payload)
        except SinkTooLarge:
            await self._split(payload, "too large")
        except SinkRejected as exc:
            await self._split(payload, str(exc))

    async def _split(self, payload: bytes, reason: str) -> None:
        """Bisect a refused batch until the refused lines are isolated; the rest is
        written. Resending lines the server already took is harmless (idempotent)."""
        lines = payload.split(b"\n")
        if len(lines) == 1:
            self._stats.rejected_lines += 1
            kind = refusal_kind(reason)
            self._problems.report(
                f"rejected:{self.name}:{kind}",
                f"sink {self.name} refuses lines, dropping them: {reason}",
                detail=f"first: {payload[:200]!r}", level=logging.WARNING,
                summary_every=REFUSAL_SUMMARY, kind=kind)
            return
        middle = len(lines) // 2
        await self._deliver(b"\n".join(lines[:middle]))
        await self._deliver(b"\n".join(lines[middle:]))


_NUMBER = re.compile(r"\d+")
_LONG_QUOTE = re.compile(r"\"[^\"]{40,}\"|'[^']{40,}'")


def refusal_kind(reason: str) -> str:
    """The kind of a store's refusal: its message without the numbers and quoted lines
    that vary from one refused line to the next, so one steady conflict is one kind."""
    return _NUMBER.sub("N", _LONG_QUOTE.sub('"…"', reason))[:200]
