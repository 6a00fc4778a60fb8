"""Is the event loop turning, and are readings getting committed?

Everything in the gateway shares one event loop: a driver that calls a blocking library
function, or a CPU-bound bug, freezes every device, sink and the ops bus at once while
the process still looks alive. A heartbeat task measures how late the loop wakes it
(the loop lag); a small thread notices a heartbeat that is overdue *while* the loop is
stuck and logs where the loop thread is, which is what one needs to fix it on site.

The same heartbeat samples the commit progress (queued readings that never get committed
mean the buffer is not writable: disk full, dead SD card) and runs the clock check.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.clock import ClockMonitor
from gateway.problems import ProblemLog

log = logging.getLogger("iotgw.health")

BEAT_INTERVAL = 0.5
COMMIT_STALL = "commit-stall"
LAG_WINDOW = 60.0
"""Seconds over which the worst lag is reported (``iotgw_event_loop_lag_max_seconds``)."""


class LoopMonitor:
    def __init__(self, *, max_lag: float = 5.0, commit_stall: float = 60.0,
                 interval: float = BEAT_INTERVAL, clock: ClockMonitor | None = None,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.max_lag = max_lag
        self.commit_stall = commit_stall
        self.interval = interval
        self.clock = clock if clock is not None else ClockMonitor()
        self._mono = mono
        self.started = mono()
        self.last_beat = self.started
        self.lag = 0.0
        self.stalls = 0
        self._recent: deque[tuple[float, float]] = deque()
        self._stalled_since: float | None = None
        self._loop_thread: int | None = None
        # commit progress
        self._problems = ProblemLog(log)
        self._committed = -1
        self._pending = 0
        self._progress_at = self.started

    # -- the heartbeat (runs on the loop) --------------------------------------------

    async def run(self, sample: Callable[[], tuple[int, int]] | None = None) -> None:
        """Beat forever. ``sample()`` returns (readings committed, readings pending)."""
        self._loop_thread = threading.get_ident()
        self.last_beat = self._mono()
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop,), daemon=True,
                                   name="iotgw-loop-watch")
        watcher.start()
        try:
            while True:
                before = self._mono()
                await asyncio.sleep(self.interval)
                self.beat(self._mono() - before - self.interval)
                if sample is not None:
                    self.commits(*sample())
                self.clock.check()
        finally:
            stop.set()

    def beat(self, lag: float) -> None:
        now = self._mono()
        self.lag = max(0.0, lag)
        self.last_beat = now
        recent = self._recent
        recent.append((now, self.lag))
        while recent and recent[0][0] < now - LAG_WINDOW:
            recent.popleft()
        if self._stalled_since is not None:
            log.warning("event loop running again after a %.1fs stall", self.lag,
                        extra={"loop_lag": round(self.lag, 3)})
            self._stalled_since = None
        elif self.lag > self.max_lag:  # shorter than the watcher's poll: still a stall
            self.stalls += 1
            log.error("event loop was stalled for %.1fs (limit %.1fs)", self.lag,
                      self.max_lag, extra={"loop_lag": round(self.lag, 3)})

    def commits(self, committed: int, pending: int) -> None:
        """Sample commit progress; log once when queued readings have waited past
        ``commit_stall`` (what /healthz fails on) and once when commits flow again. A
        30-75 s disk stall used to show only on /healthz and ``iotgw status``."""
        self._pending = pending
        if committed != self._committed or pending == 0:
            stalled = self._mono() - self._progress_at
            self._committed = committed
            self._progress_at = self._mono()
            self._problems.recovered(
                COMMIT_STALL, f"buffer commits flowing again after {stalled:.0f}s")
            return
        stalled = self.commit_stalled_for()
        if stalled > self.commit_stall:
            self._problems.report(
                COMMIT_STALL, f"no reading committed to the buffer for {stalled:.0f}s with "
                f"{pending} waiting (health.commit_stall {self.commit_stall:g}s): its disk "
                "is not taking writes (stalled, frozen or failing?); /healthz fails "
                "buffer_writable until commits flow again", kind=COMMIT_STALL)

    # -- the views --------------------------------------------------------------------

    def overdue(self, now: float | None = None) -> float:
        """Seconds the next heartbeat is late right now (0 while the loop turns)."""
        now = self._mono() if now is None else now
        return max(0.0, now - self.last_beat - self.interval)

    def current_lag(self, now: float | None = None) -> float:
        return max(self.lag, self.overdue(now))

    def max_recent_lag(self) -> float:
        return max([self.current_lag(), *(lag for _, lag in self._recent)])

    def loop_ok(self, now: float | None = None) -> bool:
        """The liveness the systemd watchdog and /healthz ask about."""
        return self.current_lag(now) <= self.max_lag

    def commit_stalled_for(self, now: float | None = None) -> float:
        """Seconds queued readings have waited without any commit (0 when flowing)."""
        if self._committed < 0 or self._pending == 0:
            return 0.0
        now = self._mono() if now is None else now
        return max(0.0, now - self._progress_at)

    def snapshot(self) -> dict[str, Any]:
        return {
            "lag_seconds": round(self.current_lag(), 6),
            "lag_max_seconds": round(self.max_recent_lag(), 6),
            "max_lag_seconds": self.max_lag,
            "stalls_total": self.stalls,
            "commit_stalled_seconds": round(self.commit_stalled_for(), 3),
            "commit_stall_limit_seconds": self.commit_stall,
        }

    # -- the stall watcher (its own thread) -----------------------------------------------

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(min(0.25, self.interval)):
            overdue = self.overdue()
            if overdue > self.max_lag and self._stalled_since is None:
                self._stalled_since = self.last_beat
                self.stalls += 1
                log.error("event loop stalled for %.1fs (limit %.1fs): every device, sink "
                          "and the ops bus are frozen; the loop thread is at:\n%s",
                          overdue, self.max_lag, self._loop_stack(),
                          extra={"loop_lag": round(overdue, 3)})

    def _loop_thread_frame(self) -> Any:
        if self._loop_thread is None:
            return None
        return sys._current_frames().get(self._loop_thread)

    def _loop_stack(self) -> str:
        frame = self._loop_thread_frame()
        if frame is None:
            return "(unknown)"
        return "".join(traceback.format_stack(frame, limit=12)).rstrip()


_MONITORS: weakref.WeakKeyDictionary[Any, LoopMonitor] = weakref.WeakKeyDictionary()


def monitor_for(gateway: Any) -> LoopMonitor:
    """The one monitor of ``gateway`` (several gateways may share a process in tests)."""
    monitor = _MONITORS.get(gateway)
    if monitor is None:
        health = gateway.config.model.health
        if health is not None:
            monitor = LoopMonitor(max_lag=health.max_loop_lag, commit_stall=health.commit_stall)
        else:
            monitor = LoopMonitor()
        _MONITORS[gateway] = monitor
    return monitor
