"""Wall-clock sanity: a Raspberry Pi has no real-time clock.

Every reading is stamped with the gateway's wall clock at acquisition. After a power cut
a Pi boots with the time ``fake-hwclock`` saved at the last clean shutdown (or 1970 when
there is none) and only gets the real time once NTP answers, which may be minutes or,
with the uplink down, days later. Readings taken meanwhile carry that wrong time: they
are kept as they are (nothing is re-stamped; there is no reliable offset to apply), so
operators must be able to see when it happened. This module detects it:

* **before build**: the clock reads earlier than this release was made, so it cannot be
  right;
* **jumps**: the wall clock moved differently from the monotonic clock between two
  checks (NTP stepping it at boot, an operator's ``date -s``, a VM resume);
* **kernel sync flag**: ``adjtimex`` says the kernel clock is not synchronised
  (unavailable under a seccomp filter that blocks ``@clock``: then "unknown").

Findings are logged, kept for ``/metrics`` and ``/status``, and handed to listeners (the
ops bus publishes them). The clocks are injectable so tests can make time jump.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("iotgw.clock")

BUILD_TIME = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
"""No correct clock reads earlier than this. Raise it at every release."""

JUMP_THRESHOLD = 2.0
"""Seconds of disagreement between wall and monotonic time that count as a jump; below
it is NTP slewing and scheduling noise."""

SYNC_PROBE_INTERVAL = 30.0
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
_TIME_ERROR = 5
"""adjtimex() return value: the clock is not synchronised (STA_UNSYNC or STA_CLOCKERR)."""


def kernel_synchronised() -> bool | None:
    """The kernel's view of NTP sync, as ``timedatectl`` shows it; None when unknown.

    ``adjtimex`` with ``modes == 0`` only reads, needs no privilege, but is refused under
    systemd's ``ProtectClock=``; then systemd-timesyncd's flag file is the next best hint."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        state = -1
    if state >= 0:
        return state != _TIME_ERROR
    return True if TIMESYNCD_FLAG.exists() else None


@dataclass(frozen=True)
class ClockEvent:
    """What the ops bus publishes: ``kind`` is jump_forward, jump_backward, before_build,
    clock_valid, unsynchronised or synchronised."""

    kind: str
    message: str
    wall: float
    seconds: float = 0.0


@dataclass
class ClockState:
    before_build: bool = False
    synchronised: bool | None = None
    jumps_forward: int = 0
    jumps_backward: int = 0
    last_jump: float = 0.0
    """Signed seconds of the last jump (negative: backwards)."""
    last_jump_at: float | None = None
    events: list[ClockEvent] = field(default_factory=list)
    """The most recent events, newest last (kept short)."""


Listener = Callable[[ClockEvent], None]


class ClockMonitor:
    """Call :meth:`check` periodically (the health monitor does, once a second)."""

    def __init__(self, *, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic,
                 build_time: float = BUILD_TIME, jump_threshold: float = JUMP_THRESHOLD,
                 sync_probe: Callable[[], bool | None] = kernel_synchronised,
                 sync_probe_interval: float = SYNC_PROBE_INTERVAL) -> None:
        self._wall = wall
        self._mono = mono
        self._build_time = build_time
        self._threshold = jump_threshold
        self._sync_probe = sync_probe
        self._sync_interval = sync_probe_interval
        self._last: tuple[float, float] | None = None
        self._next_sync_probe = -float("inf")
        self._listeners: list[Listener] = []
        self.state = ClockState()

    def add_listener(self, listener: Listener) -> None:
        """``listener(event)`` for every finding; the ops bus publishes them."""
        self._listeners.append(listener)

    def check(self) -> None:
        wall, mono = self._wall(), self._mono()
        if self._last is not None:
            drift = (wall - self._last[0]) - (mono - self._last[1])
            if abs(drift) >= self._threshold:
                self._jumped(drift, wall)
                self._next_sync_probe = mono  # a step usually comes with a sync change
        self._last = (wall, mono)
        self._check_build(wall)
        if mono >= self._next_sync_probe:
            self._next_sync_probe = mono + self._sync_interval
            self._check_sync(wall)

    def _jumped(self, drift: float, wall: float) -> None:
        state = self.state
        state.last_jump, state.last_jump_at = drift, wall
        if drift > 0:
            state.jumps_forward += 1
            kind = "jump_forward"
            message = (f"wall clock jumped forward by {_span(drift)} (now {_iso(wall)}); "
                       "NTP synchronising after boot does this once")
        else:
            state.jumps_backward += 1
            kind = "jump_backward"
            message = (f"wall clock jumped BACK by {_span(-drift)} (now {_iso(wall)}): "
                       f"timestamps of the last {_span(-drift)} will repeat and the store "
                       "keeps the later value of a repeated point")
        level = logging.INFO if drift > 0 and self.state.before_build else logging.WARNING
        self._emit(ClockEvent(kind, message, wall, drift), level)

    def _check_build(self, wall: float) -> None:
        before = wall < self._build_time
        if before == self.state.before_build:
            return
        self.state.before_build = before
        if before:
            self._emit(ClockEvent(
                "before_build",
                f"wall clock reads {_iso(wall)}, before this release was built "
                f"({_iso(self._build_time)}): the clock is not set (no RTC, no NTP yet); "
                "readings keep this time until it is corrected", wall), logging.WARNING)
        else:
            self._emit(ClockEvent("clock_valid", f"wall clock now reads {_iso(wall)}, "
                                  "after the build date", wall), logging.INFO)

    def _check_sync(self, wall: float) -> None:
        synced = self._sync_probe()
        previous, self.state.synchronised = self.state.synchronised, synced
        if synced is None or synced == previous:
            return
        if synced:
            self._emit(ClockEvent("synchronised", "kernel clock is synchronised (NTP)", wall),
                       logging.INFO if previous is False else logging.DEBUG)
        else:
            # Alone a weak signal (VMs and containers often show it with a good clock):
            # a warning only together with a clock that is visibly wrong.
            self._emit(ClockEvent("unsynchronised", "kernel reports the clock as not "
                                  "NTP-synchronised: timestamps may drift", wall),
                       logging.WARNING if self.state.before_build else logging.INFO)

    def _emit(self, event: ClockEvent, level: int) -> None:
        log.log(level, "%s", event.message, extra={"clock_event": event.kind})
        events = self.state.events
        events.append(event)
        del events[:-10]
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("clock listener failed")

    def snapshot(self) -> dict[str, Any]:
        state = self.state
        return {
            "now": self._wall(),
            "before_build": state.before_build,
            "build_time": self._build_time,
            "synchronised": state.synchronised,
            "jumps_forward": state.jumps_forward,
            "jumps_backward": state.jumps_backward,
            "last_jump_seconds": state.last_jump,
            "last_jump_at": state.last_jump_at,
        }


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return repr(t)


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
