"""OSDP control panel for one reader, through libosdp (the reference implementation).

libosdp runs its own refresh thread over a channel; this task watches it: online/offline
and secure-channel state, card and keypad events (-> readings), local status (-> state).
When the reader goes offline libosdp waits minutes before retrying and keeps stale
sequence numbers, so the driver rebuilds the control panel every ``reconnect`` seconds
until the reader is back; a rebooted reader then comes online within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from drivers.osdp.commands import COMMANDS
from drivers.osdp.config import OsdpConfig, read_scbk
from drivers.osdp.events import READINGS, local_problems
from drivers.osdp.libosdp import ReaderPanel
from drivers.serialbus.port import PortError, PortSettings, RawChannel
from gateway.driver import DeviceState, Driver
from gateway.errors import CommandRefused
from gateway.problems import ProblemLog
from gateway.reading import Reading

TICK = 0.05


class OsdpDriver(Driver):
    config: OsdpConfig

    def __init__(self, config: OsdpConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self._cp: ReaderPanel | None = None
        self._raw: RawChannel | None = None
        self._problems = ProblemLog(ctx.log)

    def _open(self) -> None:
        cfg = self.config
        key = read_scbk(cfg.key_file) if cfg.key_file is not None else None
        raw = RawChannel(PortSettings(cfg.port, cfg.baudrate))
        try:
            self._cp = ReaderPanel(raw, cfg.address, self.ctx.device_id, scbk=key,
                                   secure=cfg.secure, install_mode=cfg.install_mode)
        except BaseException:
            raw.close()
            raise
        self._raw = raw

    def _close(self) -> None:
        cp, raw = self._cp, self._raw
        self._cp = self._raw = None
        if cp is not None:
            cp.close()
        if raw is not None:
            raw.close()

    async def run(self) -> None:
        cfg = self.config
        try:
            while True:
                try:
                    await asyncio.to_thread(self._open)
                except PortError as exc:
                    self._offline("no_connection", str(exc))
                    await asyncio.sleep(cfg.reconnect)
                    continue
                await self._watch()
                await asyncio.to_thread(self._close)
        finally:
            await asyncio.to_thread(self._close)

    async def _watch(self) -> None:
        """Until the reader has been offline for ``reconnect`` seconds (then rebuild)."""
        cfg = self.config
        cp, raw = self._cp, self._raw
        assert cp is not None and raw is not None
        online = False
        offline_since = time.monotonic()
        while True:
            now = time.monotonic()
            is_online = cp.online
            if is_online and not online:
                online = True
                secure = cp.secure_channel
                self._problems.recovered("link", f"device {self.ctx.device_id}: reader "
                                         f"online (secure channel {'on' if secure else 'off'})")
                self.ctx.set_state(DeviceState.ONLINE)
            elif not is_online and online:
                online = False
                offline_since = now
                self._offline("offline", "reader stopped answering")
            elif not online and now - offline_since >= cfg.reconnect:
                if self.ctx.status.state is not DeviceState.OFFLINE:
                    self._offline("offline", "reader does not answer")
                return
            if raw.failure is not None:
                self._offline("no_connection", raw.failure)
                return
            await self._drain_events(cp)
            await asyncio.sleep(TICK)

    def _offline(self, kind: str, message: str) -> None:
        self.ctx.count(kind)
        self._problems.report("link", f"device {self.ctx.device_id}: {message}",
                              level=logging.WARNING)
        self.ctx.set_state(DeviceState.OFFLINE, f"{kind}: {message}")

    async def _drain_events(self, cp: ReaderPanel) -> None:
        readings = []
        while (event := cp.next_event()) is not None:
            to_reading = READINGS.get(event.get("event"))
            if to_reading is not None:
                tags, fields = to_reading(event)
                readings.append(Reading(self.config.measurement, tags, fields, time.time_ns()))
                continue
            problems = local_problems(event)
            if problems:
                for problem in problems:
                    self.ctx.count(problem.replace(" ", "_"))
                self.ctx.set_state(DeviceState.ERROR, ", ".join(problems))
            elif problems == []:
                self.ctx.set_state(DeviceState.ONLINE)
        if readings:
            await self.ctx.emit(readings)

    async def write(self, point: str, value: Any) -> dict[str, Any]:
        make = COMMANDS.get(point)
        if make is None:
            raise CommandRefused(f"unknown OSDP point {point!r}; known: {', '.join(COMMANDS)}")
        command = make(value)
        cp = self._cp
        if cp is None or not cp.online:
            raise CommandRefused("reader is offline")
        if not cp.submit(command):
            raise CommandRefused("libosdp refused the command (queue full or not supported)")
        return {"submitted": point}
