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
    SinkPartlyStored,
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
        self._retrying: Delivery | None = None
        """The batch a failed attempt left, with what of it is still to send: while the
        buffer still holds the same chunks, retried as it is, so a refused batch's
        bisection is not started over after every 503."""

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
            held, self._retrying = self._retrying, None
            if held is not None and batch is not None and batch.last_id == held.batch.last_id \
                    and batch.lines == held.batch.lines:
                # The same chunks as the failed attempt: go on with what is left of it. Not
                # if the buffer evicted some meanwhile (a full disk): those are counted as
                # dropped, and sending them from memory made the count wrong.
                await self._retry_delivery(held)
                continue
            if batch is None:
                self._new_data.clear()
                if self._unacked is not None:
                    await self._ack(self._unacked)
                batch = await self._buffer.read(self.name, limit, self._unacked)
                if batch is None:
                    await wait_event(self._new_data, IDLE_RECHECK)
                    continue
            await self._retry_delivery(Delivery(batch))

    async def _retry_delivery(self, delivery: Delivery) -> None:
        """One attempt at a delivery; after a failure, the wait before the next."""
        delay = await self._deliver_batch(delivery)
        self._retrying = delivery if delay is not None else None
        if delay is not None:
            await asyncio.sleep(delay)

    async def _deliver_batch(self, delivery: Delivery) -> float | None:
        """Deliver and record one batch. A stop that arrives while the sink is writing or
        the buffer is recording the delivery lets both finish (up to ``STOP_GRACE``):
        otherwise a clean stop would send the same batch again at the next start
        (harmless for InfluxDB, a duplicate for the file sink)."""
        work = asyncio.ensure_future(self._deliver_and_record(delivery))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await asyncio.shield(work)
            except (TimeoutError, Exception):  # stopping anyway: it is sent again later
                work.cancel()
            raise

    async def _deliver_and_record(self, delivery: Delivery) -> float | None:
        delay = await self._try_deliver(delivery)
        if delay is None:
            await self._delivered(delivery)
        return delay

    async def _delivered(self, delivery: Delivery) -> None:
        self._stats.sent_lines += delivery.batch.lines - delivery.refused
        self._stats.sent_batches += 1
        await self._ack(delivery.batch.last_id)

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

    async def _try_deliver(self, delivery: Delivery) -> float | None:
        """None when the batch is done with (stored, or bad lines dropped); otherwise the
        seconds to wait before retrying what is left of it."""
        key = f"sink:{self.name}"
        try:
            await self._deliver(delivery)
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
        """Logged once per state (an outage is one ERROR however its text varies: a
        reset of the kept-alive connection, then refused connections), repeats counted,
        the latest text in the stats; recovery at INFO."""
        self._stats.state = state
        self._stats.errors += 1
        self._stats.last_error = message
        self._problems.report(key, message, kind=state)

    async def _deliver(self, delivery: Delivery) -> None:
        """Send what is left of the batch, piece by piece. A refused or too large piece is
        halved until the refused lines are isolated, the rest written (resending lines the
        server already took is harmless: idempotent). A failure leaves the unsent pieces
        in ``delivery`` for the next attempt.

        Refused lines are dropped only when the store took some of the batch: a store
        that refuses every line of a batch of several is not refusing a few bad lines
        (a proxy's answer taken for a refusal, a store that cannot take anything, lines
        the gateway got wrong). Such a batch stays buffered and the sink failed, retried
        whole every ``auth_retry`` (one request, not a new bisection, while the answer
        stays the same)."""
        pieces = delivery.pieces
        while pieces:
            piece = pieces[-1]
            try:
                await self._sink.write(piece)
            except SinkPartlyStored as exc:  # the store kept the rest: nothing to resend
                self._backoff.reset()
                delivery.accepted = True
                delivery.suspect = None
                delivery.hold(exc.refused_lines, str(exc), None)
            except (SinkTooLarge, SinkRejected) as exc:
                reason = "too large" if isinstance(exc, SinkTooLarge) else str(exc)
                if delivery.suspect is not None:  # the whole batch, sent again
                    if refusal_kind(reason) == delivery.suspect:  # no new bisection
                        raise SinkAuthError("still refuses every line of the batch: "
                                            f"{exc}") from exc
                    delivery.suspect = None
                lines = piece.split(b"\n")
                if len(lines) > 1:
                    middle = len(lines) // 2
                    pieces[-1:] = [b"\n".join(lines[middle:]), b"\n".join(lines[:middle])]
                    continue
                delivery.hold(1, reason, piece)
            else:
                # The store takes data: a 503 between the pieces of a long bisection
                # waits the backoff's first step, not one grown over hundreds of requests
                # (an outside probe: 51 of 2,928 healthy readings in 60 s).
                self._backoff.reset()
                delivery.accepted = True
                delivery.suspect = None
            pieces.pop()
        if not delivery.accepted and delivery.batch.lines > 1:
            reason = delivery.held[0][1]
            delivery.restart(suspect=refusal_kind(reason))
            raise SinkAuthError(
                f"refused every one of the {delivery.batch.lines} lines of a batch "
                f"({reason}): not dropping a whole batch, it stays buffered (a store that "
                "refuses everything is misconfigured, or the answer is not about the lines)")
        for count, reason, line in delivery.held:
            self._refused(delivery, count, reason, line)
        delivery.held.clear()

    def _refused(self, delivery: Delivery, lines: int, reason: str,
                 line: bytes | None = None) -> None:
        """Count refused lines and log the kind once; ``line`` is the refused line, when
        bisection isolated it (a partial write's message names its lines itself)."""
        delivery.refused += lines
        self._stats.rejected_lines += lines
        kind = refusal_kind(reason)
        self._problems.report(
            f"rejected:{self.name}:{kind}",
            f"sink {self.name} refuses lines, dropping them: {reason}",
            detail=f"first: {line[:200]!r}" if line is not None else "",
            level=logging.WARNING,
            summary_every=REFUSAL_SUMMARY, kind=kind)


class Delivery:
    """One batch on its way to a sink: the pieces still to send (a stack, the next one
    last), the refusals held until the batch is done with, and how many of its lines
    the store refused."""

    __slots__ = ("accepted", "batch", "held", "pieces", "refused", "suspect")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.pieces = [batch.payload]
        self.refused = 0
        self.held: list[tuple[int, str, bytes | None]] = []
        """Refused lines (count, reason, the line when isolated), dropped at the end."""
        self.accepted = False
        """The store took some piece of the batch (or said it kept the rest)."""
        self.suspect: str | None = None
        """The refusal kind with which the store refused every line last time: until the
        store answers the whole batch otherwise, it is not bisected again."""

    def hold(self, lines: int, reason: str, line: bytes | None) -> None:
        self.held.append((lines, reason, line))

    def restart(self, suspect: str) -> None:
        self.pieces = [self.batch.payload]
        self.held.clear()
        self.accepted = False
        self.suspect = suspect


_NUMBER = re.compile(r"\d+")
_LONG_QUOTE = re.compile(r"\"[^\"]{40,}\"|'[^']{40,}'")


def refusal_kind(reason: str) -> str:
    """The kind of a store's refusal: its message without the numbers and quoted lines
    that vary from one refused line to the next, so one steady conflict is one kind."""
    return _NUMBER.sub("N", _LONG_QUOTE.sub('"…"', reason))[:200]
