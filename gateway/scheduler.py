"""Sharing one bus between many polled devices, protocol-agnostic.

Used by every polled driver (Modbus, DL/T 645, CJ/T 188). Three small pieces:

* :class:`BusScheduler` - one per serial line or TCP endpoint. One request at a time;
  when several devices wait, the one whose deadline is earliest goes next
  (earliest-deadline-first), so a slow or dead device cannot make fast devices miss
  their interval; a configurable silence (the Modbus 3.5-character gap) separates turns.
* :class:`PollTimer` - when a device is due: a drift-free grid while it answers (missed
  slots are skipped, never burst), exponential backoff while it does not, so a dead
  meter costs the bus one short probe per backoff period.
* :class:`DeviceHealth` - turns poll outcomes into the core's device state
  (online/offline/error with the last error), per-kind counters, and one log line per
  distinct failure instead of one per poll.

Times are ``time.monotonic()`` seconds throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.driver import DeviceContext, DeviceState
from gateway.errors import GatewayError
from gateway.problems import ProblemLog

__all__ = ["BusClosed", "BusScheduler", "DeviceHealth", "PollTimer", "TurnStats"]


class BusClosed(GatewayError):
    """The bus scheduler was closed while a device waited for its turn."""


@dataclass
class TurnStats:
    """Per-device bus usage: what an operator needs to see a bus is overbooked."""

    turns: int = 0
    waits: int = 0
    """Turns that had to queue behind another device."""
    late: int = 0
    """Turns that started after their deadline."""
    wait_time: float = 0.0
    max_wait: float = 0.0
    busy_time: float = 0.0


@dataclass(order=True)
class _Waiter:
    deadline: float
    seq: int
    device_id: str = ""
    future: asyncio.Future[None] | None = None


class BusScheduler:
    """Grants exclusive, EDF-ordered turns on one bus.

    ``async with scheduler.turn(device_id, deadline): ...`` - everything inside (one
    request/response exchange, or a few back to back) has the bus to itself. Ownership
    passes directly from the releasing turn to the chosen waiter, so a newcomer can never
    overtake a queued device with an earlier deadline.
    """

    def __init__(self, name: str, inter_frame_delay: float = 0.0) -> None:
        self.name = name
        self.inter_frame_delay = max(0.0, inter_frame_delay)
        self.stats: dict[str, TurnStats] = {}
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()
        self._busy = False
        self._closed = False
        self._last_end = -math.inf

    @property
    def queued(self) -> int:
        return sum(1 for w in self._heap if w.future is not None and not w.future.done())

    @contextlib.asynccontextmanager
    async def turn(self, device_id: str, deadline: float) -> AsyncIterator[None]:
        stats = self.stats.setdefault(device_id, TurnStats())
        asked = time.monotonic()
        await self._acquire(device_id, deadline, stats)
        start: float | None = None
        try:
            # The silence belongs to the new turn: it is only paid when a request follows.
            gap = self._last_end + self.inter_frame_delay - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            start = time.monotonic()
            waited = start - asked
            stats.turns += 1
            stats.wait_time += waited
            stats.max_wait = max(stats.max_wait, waited)
            if start > deadline:
                stats.late += 1
            yield
        finally:
            end = time.monotonic()
            self._last_end = end
            if start is not None:
                stats.busy_time += end - start
            self._release()

    async def _acquire(self, device_id: str, deadline: float, stats: TurnStats) -> None:
        if self._closed:
            raise BusClosed(f"bus {self.name} is closed")
        if not self._busy and not self._pending():
            self._busy = True
            return
        stats.waits += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, _Waiter(deadline, next(self._seq), device_id, future))
        try:
            await future
        except asyncio.CancelledError:
            # Granted in the same loop step as the cancellation: pass the bus on, or it
            # would stay owned by a task that never uses it.
            if future.done() and not future.cancelled() and future.exception() is None:
                self._release()
            raise

    def _pending(self) -> bool:
        while self._heap and (self._heap[0].future is None or self._heap[0].future.done()):
            heapq.heappop(self._heap)
        return bool(self._heap)

    def _release(self) -> None:
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if waiter.future is not None and not waiter.future.done():
                waiter.future.set_result(None)  # ownership moves; _busy stays True
                return
        self._busy = False

    async def close(self) -> None:
        """Refuse new turns and fail the queued ones (their devices are stopping)."""
        self._closed = True
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if waiter.future is not None and not waiter.future.done():
                waiter.future.set_exception(BusClosed(f"bus {self.name} is closed"))


class PollTimer:
    """When a device is next due.

    While the device answers, due times sit on a fixed grid ``start + k * interval``: no
    drift from poll duration, and slots missed because the bus was busy are skipped
    (counted in ``missed``) rather than polled in a burst. After a failed poll the next
    probe is ``backoff_base * 2**(n-1)`` seconds later, capped at ``backoff_max``, and
    never sooner than one interval; the first success returns to the grid.
    """

    def __init__(self, interval: float, backoff_base: float | None = None,
                 backoff_max: float = 60.0, start: float | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.backoff_base = interval if backoff_base is None else backoff_base
        self.backoff_max = max(backoff_max, self.interval)
        self.due = time.monotonic() if start is None else start
        self.failures = 0
        self.missed = 0
        self._grid = self.due

    @property
    def deadline(self) -> float:
        """The EDF deadline of the poll due now: it should be done before the next one.

        A device in backoff gets its (long) backoff period, so probes of dead devices
        yield the bus to healthy ones."""
        return self.due + (self.interval if self.failures == 0 else self.backoff_delay())

    def backoff_delay(self) -> float:
        if self.failures == 0:
            return self.interval
        delay = self.backoff_base * 2.0 ** (self.failures - 1)
        return min(self.backoff_max, max(self.interval, delay))

    def success(self, now: float | None = None) -> float:
        """Record a good poll; returns the next due time (on the grid, after ``now``)."""
        now = time.monotonic() if now is None else now
        self.failures = 0
        nxt = self._grid + self.interval
        if nxt <= now:
            skipped = math.floor((now - nxt) / self.interval) + 1
            self.missed += skipped
            nxt += skipped * self.interval
        self._grid = nxt
        self.due = nxt
        return nxt

    def failure(self, now: float | None = None) -> float:
        """Record a failed poll; returns when to probe again (exponential backoff)."""
        now = time.monotonic() if now is None else now
        self.failures += 1
        self.due = now + self.backoff_delay()
        # Keep the grid anchored near the probe so recovery does not count a long
        # outage as "missed" slots.
        self._grid = self.due - self.interval
        return self.due

    def now_due(self, now: float | None = None) -> None:
        """Poll at once (an ops ``poll now`` command), then continue on the grid."""
        self.due = time.monotonic() if now is None else now

    async def sleep(self) -> None:
        delay = self.due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


# Which state a failure puts a device in: silent devices are offline, devices that
# answer wrongly (exception replies, bad data) are in error.
OFFLINE_KINDS = frozenset({"timeout", "no_connection", "frame_error"})


class DeviceHealth:
    """Device state and problem counters from poll outcomes.

    ``failed(kind, message)`` counts ``kind`` on the device, logs the message the first
    time (and when it changes), and sets the state; ``ok()`` sets online and logs the
    recovery once. ``offline_after`` consecutive failures are needed before a device
    that was online is reported offline, so one lost frame is not an outage.
    """

    def __init__(self, ctx: DeviceContext, offline_after: int = 1,
                 logger: logging.Logger | None = None) -> None:
        self.ctx = ctx
        self.offline_after = max(1, offline_after)
        self.problems = ProblemLog(logger or ctx.log)
        self.consecutive = 0

    def ok(self, poll_seconds: float | None = None) -> None:
        self.consecutive = 0
        if poll_seconds is not None:
            self.ctx.status.poll_seconds = poll_seconds
        self.problems.recovered("poll", f"device {self.ctx.device_id} answers again")
        self.ctx.set_state(DeviceState.ONLINE)

    def partial(self, kind: str, message: str) -> None:
        """The device answers, but something (a point) is wrong: counted and logged once,
        state stays as is."""
        self.ctx.count(kind)
        self.problems.report(f"partial:{kind}", message, level=logging.WARNING)

    def failed(self, kind: str, message: str) -> None:
        self.consecutive += 1
        self.ctx.count(kind)
        self.problems.report("poll", message, level=logging.WARNING)
        if self.consecutive < self.offline_after and self.ctx.status.state is DeviceState.ONLINE:
            return
        state = DeviceState.OFFLINE if kind in OFFLINE_KINDS else DeviceState.ERROR
        self.ctx.set_state(state, f"{kind}: {message}")
