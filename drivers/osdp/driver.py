"""An OSDP reader, with the gateway as control panel, through libosdp.

Readers configured on the same port share one line and one libosdp control panel
(drivers/osdp/line.py: OSDP is multi-drop). This task watches its own reader on it:
online/offline and secure-channel state, card and keypad events (-> readings), local
status (-> state). libosdp waits minutes before retrying an offline reader and keeps stale
sequence numbers, so a reader offline for ``reconnect`` seconds is restarted on its own
(the other readers keep their sessions); a rebooted reader then comes online within a
second. A failed port (unplugged adapter) rebuilds the whole line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from drivers.osdp.commands import COMMANDS
from drivers.osdp.config import OsdpConfig, read_scbk
from drivers.osdp.events import READINGS, STATUS_MEASUREMENT, local_problems, local_status
from drivers.osdp.libosdp import OsdpPanel, ReaderSpec
from drivers.osdp.line import OsdpLine
from drivers.osdp.session import Cause, SessionDiagnosis
from drivers.serialbus.port import PortError
from gateway.driver import DeviceState, Driver
from gateway.errors import CommandRefused
from gateway.problems import ProblemLog
from gateway.reading import Reading

TICK = 0.05


class OsdpDriver(Driver):
    config: OsdpConfig

    def __init__(self, config: OsdpConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self._line: OsdpLine | None = None
        self._problems = ProblemLog(ctx.log)
        self._link_down = False
        """The link problem (offline, refused) is reported: its end is a recovery."""

    async def run(self) -> None:
        cfg = self.config
        key = read_scbk(cfg.key_file) if cfg.key_file is not None else None
        reader = ReaderSpec(cfg.address, self.ctx.device_id, key, cfg.secure, cfg.install_mode)

        async def make_line() -> OsdpLine:
            return OsdpLine(cfg.port, cfg.baudrate)

        async with self.ctx.resources.use(("osdp", cfg.port), make_line) as line:
            self._line = line
            try:
                await self._serve(line, reader)
            finally:
                self._line = None
                await line.leave(cfg.address)

    async def _serve(self, line: OsdpLine, reader: ReaderSpec) -> None:
        joined = False
        while True:
            seen = line.generation
            try:
                if not joined:
                    joined = True
                    await line.join(reader)
                elif line.panel is None or line.failure is not None:
                    await line.rebuild(seen)
            except PortError as exc:
                self._offline("no_connection", str(exc))
                await asyncio.sleep(self.config.reconnect)
                continue
            failure = await self._watch(line)
            self._offline("no_connection", failure)
            await asyncio.sleep(self.config.reconnect)

    async def _watch(self, line: OsdpLine) -> str:
        """Until the line's port fails; returns why."""
        cfg = self.config
        address = cfg.address
        online = False
        offline_since = time.monotonic()
        generation = line.generation
        diagnosis = SessionDiagnosis()
        while True:
            panel = line.panel
            if panel is None or line.failure is not None:
                return line.failure or "the port is closed"
            now = time.monotonic()
            if line.generation != generation:
                # Rebuilt for a reader joining or leaving: a new session, not an outage.
                generation, online, offline_since = line.generation, False, now
                diagnosis = SessionDiagnosis()
            is_online = panel.online(address)
            if is_online and not online:
                online = True
                diagnosis.online(panel.identity(address))
                self._online(panel.secure_channel(address))
            elif not is_online and online:
                online = False
                offline_since = now
                self._offline("offline", "reader stopped answering")
            elif not online and now - offline_since >= cfg.reconnect:
                cause = diagnosis.failed(panel.identity(address))
                if cause is not None:
                    self._not_online(cause)
                await asyncio.to_thread(panel.restart, address)
                offline_since = now
            await self._drain_events(panel)
            await asyncio.sleep(TICK)

    def _online(self, secure: bool) -> None:
        """Logged on every session start (the clean start included), as recovery when
        the reader had been reported offline or refused."""
        message = (f"device {self.ctx.device_id}: reader online, secure channel "
                   f"{'active' if secure else 'off'}")
        ours, self._link_down = self._link_down, False
        if ours:
            self._problems.recovered("link", message)
        else:
            self.ctx.log.info("%s", message)
        if ours or self.ctx.status.state is not DeviceState.ERROR:
            self.ctx.set_state(DeviceState.ONLINE)

    def _not_online(self, cause: Cause) -> None:
        """A failed attempt; a repeated cause is counted, not logged again."""
        if cause.state is DeviceState.OFFLINE and self.ctx.status.state is cause.state:
            return
        self.ctx.count(cause.counter)
        self._link_down = True
        self._problems.report("link", f"device {self.ctx.device_id}: {cause.message}",
                              level=cause.level)
        self.ctx.set_state(cause.state, f"{cause.counter}: {cause.message}")

    def _offline(self, kind: str, message: str) -> None:
        self.ctx.count(kind)
        self._link_down = True
        self._problems.report("link", f"device {self.ctx.device_id}: {message}",
                              level=logging.WARNING)
        self.ctx.set_state(DeviceState.OFFLINE, f"{kind}: {message}")

    async def _drain_events(self, panel: OsdpPanel) -> None:
        readings = []
        while (event := panel.next_event(self.config.address)) is not None:
            to_reading = READINGS.get(event.get("event"))
            if to_reading is not None:
                tags, fields = to_reading(event)
                readings.append(Reading(self.config.measurement, tags, fields, time.time_ns()))
                continue
            status = local_status(event)
            if status is not None:
                readings.append(Reading(STATUS_MEASUREMENT, {"kind": "status"}, status,
                                        time.time_ns()))
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
        panel = self._line.panel if self._line is not None else None
        if panel is None or not panel.online(self.config.address):
            raise CommandRefused("reader is offline")
        if not panel.submit(self.config.address, command):
            raise CommandRefused("libosdp refused the command (queue full or not supported)")
        return {"submitted": point}
