"""OSDP control panel for one reader, through libosdp (the reference implementation).

libosdp runs its own refresh thread over a channel; this task watches it: online/offline
and secure-channel state, card and keypad events (-> readings), local status (-> state).
When the reader goes offline libosdp waits minutes before retrying and keeps stale
sequence numbers, so the driver rebuilds the control panel every ``reconnect`` seconds
until the reader is back; a rebooted reader then comes online within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from typing import Any

from osdp import Channel, ControlPanel, LibFlag, LogLevel, PDInfo

from drivers.osdp.commands import COMMANDS
from drivers.osdp.config import OsdpConfig, read_scbk
from drivers.osdp.events import READINGS, local_problems
from drivers.serialbus.port import PortError, PortSettings, RawChannel
from gateway.driver import DeviceState, Driver
from gateway.errors import CommandRefused
from gateway.problems import ProblemLog
from gateway.reading import Reading

TICK = 0.05


class _Channel(Channel):
    """libosdp's channel interface over the project's one pyserial wrapper."""

    def __init__(self, raw: RawChannel) -> None:
        super().__init__()
        self.raw = raw

    def read(self, max_bytes: int) -> bytes:
        return self.raw.read(max_bytes)

    def write(self, buf: bytes) -> int:
        return self.raw.write(buf)

    def flush(self) -> None:
        self.raw.flush()


class OsdpDriver(Driver):
    config: OsdpConfig

    def __init__(self, config: OsdpConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self._cp: ControlPanel | None = None
        self._raw: RawChannel | None = None
        self._problems = ProblemLog(ctx.log)

    def _open(self) -> None:
        cfg = self.config
        flags = []
        if cfg.secure:
            flags.append(LibFlag.EnforceSecure)
        if cfg.install_mode:
            flags.append(LibFlag.InstallMode)
        key = read_scbk(cfg.key_file) if cfg.key_file is not None else None
        self._raw = RawChannel(PortSettings(cfg.port, cfg.baudrate))
        info = PDInfo(cfg.address, _Channel(self._raw), scbk=key, flags=flags,
                      name=f"{self.ctx.device_id}")
        # Error level: libosdp prints to stderr itself, and its debug output would include
        # packet contents (card numbers).
        self._cp = ControlPanel([info], log_level=LogLevel.Error)
        self._cp.start()

    def _close(self) -> None:
        cp, raw = self._cp, self._raw
        self._cp = self._raw = None
        if cp is not None:
            with contextlib.suppress(Exception):
                cp.teardown()
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
            is_online = cp.is_online(cfg.address)
            if is_online and not online:
                online = True
                secure = cp.is_sc_active(cfg.address)
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

    async def _drain_events(self, cp: ControlPanel) -> None:
        readings = []
        while True:
            try:
                event = cp.event_queue[0].get_nowait()
            except queue.Empty:
                break
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
        if cp is None or not cp.is_online(self.config.address):
            raise CommandRefused("reader is offline")
        if not cp.submit_command(self.config.address, command):
            raise CommandRefused("libosdp refused the command (queue full or not supported)")
        return {"submitted": point}
