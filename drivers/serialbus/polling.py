"""The polling loop every serial meter driver shares (DL/T 645, CJ/T 188).

A subclass says how to read the meter once (:meth:`PolledMeter.poll`); this class does
the rest the same way for all: one scheduler turn per poll on the shared line, a
drift-free grid while the meter answers, backoff while it does not, device state and
counters through ``DeviceHealth``, and ``poll_now`` for the ops bus.
"""

from __future__ import annotations

import abc
import asyncio
import time
from typing import Any, Protocol

from drivers.serialbus.line import SerialLine, shared_line
from drivers.serialbus.port import PortError
from gateway.aio import wait_event
from gateway.driver import Driver
from gateway.errors import DeviceError
from gateway.reading import FieldValue, Reading
from gateway.scheduler import DeviceHealth, PollTimer


class ReadFailed(DeviceError):
    """A read went wrong; ``kind`` is the counter name (timeout, frame_error, error_...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


SILENT_KINDS = frozenset({"timeout", "frame_error", "no_connection"})
"""Failures that end the whole poll: the meter is not answering usefully."""


class PolledSettings(Protocol):
    """What the polling loop reads from a meter's config (a driver may pass an adapter
    that fills defaults, as CJ/T 188 does for ``measurement``)."""

    interval: float
    backoff_max: float
    offline_after: int
    measurement: str


class PolledMeter(Driver):
    """Base of polled serial meters. Config needs ``interval``, ``measurement``,
    ``backoff_max`` and ``offline_after``."""

    def __init__(self, config: Any, ctx: Any) -> None:
        # config: Any, since an adapter such as CJ/T 188's is no DeviceConfigBase.
        super().__init__(config, ctx)
        self.settings: PolledSettings = config
        self._wake = asyncio.Event()
        self._timer: PollTimer | None = None
        self.health = DeviceHealth(ctx, offline_after=config.offline_after)

    @abc.abstractmethod
    async def poll(self, line: SerialLine) -> dict[str, FieldValue]:
        """Read the meter once; raise ReadFailed for a failed poll, call
        ``self.health.partial`` for a point that failed while others worked."""

    def count(self, kind: str, n: int = 1) -> None:
        self.ctx.count(kind, n)

    async def run(self) -> None:
        cfg = self.settings
        timer = self._timer = PollTimer(cfg.interval, backoff_max=cfg.backoff_max)
        async with shared_line(self.ctx) as line:
            while True:
                delay = timer.due - time.monotonic()
                if delay > 0 and await wait_event(self._wake, delay):
                    self._wake.clear()
                    timer.now_due()
                stamp = time.time_ns()
                try:
                    async with line.scheduler.turn(self.ctx.device_id, timer.deadline):
                        fields = await self.poll(line)
                except ReadFailed as exc:
                    self.health.failed(exc.kind, str(exc))
                    timer.failure()
                    continue
                except PortError as exc:
                    self.health.failed("no_connection", str(exc))
                    timer.failure()
                    continue
                timer.success()
                if fields:
                    self.health.ok((time.time_ns() - stamp) / 1e9)
                    await self.ctx.emit([Reading(cfg.measurement, {}, fields, stamp)])

    async def poll_now(self) -> None:
        self._wake.set()
