"""serial_line driver: records pushed by a reader become readings, as they arrive.

The port is the device's own (readers are not polled, so they cannot share a bus with
meters). When the port fails or cannot be opened, the device goes offline and the port
is reopened with backoff; bad records are counted and logged once per kind, by length
only, never by content.
"""

from __future__ import annotations

import asyncio
import logging
import time

from drivers.serial_line.config import SerialLineConfig
from drivers.serial_line.framer import Framer
from drivers.serial_line.parse import RecordError, parser_for
from drivers.serialbus.port import PortError, PortSettings, SerialPort
from gateway.backoff import Backoff
from gateway.driver import DeviceState, Driver
from gateway.problems import ProblemLog
from gateway.reading import Reading


class SerialLineDriver(Driver):
    config: SerialLineConfig

    async def run(self) -> None:
        cfg = self.config
        port = SerialPort(PortSettings(cfg.port, cfg.baudrate, cfg.parity, cfg.bytesize,
                                       cfg.stopbits))
        problems = ProblemLog(self.ctx.log)
        backoff = Backoff(base=0.5, cap=cfg.reconnect_max)
        try:
            while True:
                try:
                    await port.open()
                    backoff.reset()
                    problems.recovered("port", f"device {self.ctx.device_id}: port open")
                    self.ctx.set_state(DeviceState.ONLINE)
                    await self._read(port, problems)
                except PortError as exc:
                    self.ctx.count("no_connection")
                    problems.report("port", f"device {self.ctx.device_id}: {exc}",
                                    level=logging.WARNING)
                    self.ctx.set_state(DeviceState.OFFLINE, str(exc))
                    await port.close()
                    await asyncio.sleep(backoff.next())
        finally:
            await port.close()

    async def _read(self, port: SerialPort, problems: ProblemLog) -> None:
        cfg = self.config
        framer = Framer(cfg.framing)
        parse = parser_for(cfg)
        last_data = time.monotonic()
        while True:
            data = await port.read_available(time.monotonic() + cfg.framing.idle_reset)
            now = time.monotonic()
            if not data:
                if framer.buf and now - last_data >= cfg.framing.idle_reset:
                    framer.idle()
                self._flush_problems(framer, problems)
                continue
            last_data = now
            stamp = time.time_ns()
            readings = []
            for record in framer.feed(data):
                try:
                    tags, fields = parse(record)
                except RecordError as exc:
                    self.ctx.count(exc.kind)
                    problems.report(f"record:{exc.kind}",
                                    f"device {self.ctx.device_id}: {exc}",
                                    level=logging.WARNING)
                    continue
                readings.append(Reading(cfg.measurement, tags, fields or {"event": 1},
                                        stamp))
            self._flush_problems(framer, problems)
            if readings:
                await self.ctx.emit(readings)

    def _flush_problems(self, framer: Framer, problems: ProblemLog) -> None:
        for kind, n in framer.problems.items():
            self.ctx.count(kind, n)
            problems.report(f"framing:{kind}", f"device {self.ctx.device_id}: {kind} input "
                            "dropped", level=logging.WARNING)
        framer.problems.clear()
