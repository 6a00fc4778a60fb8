"""Simulated field devices for ``iotgw demo``, all in the gateway's event loop.

* :class:`ModbusMeters` - a Modbus TCP server (drivers/modbus/client.py's RegisterServer)
  on a loopback port serving one or more units; each unit's registers are filled from
  the points the gateway will read (its profile), with plausible values that drift,
  energy counters integrating power.
* :class:`MeterBus` - one RS-485 line as a pseudo-terminal: DL/T 645-2007 electricity
  meters and CJ/T 188 water meters answer on the far end, framed with the drivers' codecs.
* :class:`CardReader` - a pseudo-terminal where a reader prints ``CARD:...;DIR:IN`` lines.
* :class:`LeakingWater` - a Modbus water meter's values: a household's bursts of use, then
  a leak that never stops (for the alarm demo).
* :class:`DoorController` - a pseudo-terminal where a door controller prints
  ``EVT:door_open`` / ``EVT:door_closed``; once, the door is held open.
* :func:`plate_camera` - publishes Vzicloud ``ivs_result`` messages to an MQTT broker.

Product code: nothing here imports from the tests (their simulators stay independent of
the drivers on purpose; this one may use the codecs, it only has to look like a site).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import random
import time
import tty
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from drivers.cjt188 import frame as f188
from drivers.dlt645 import frame as f645
from drivers.dlt645.points import POINTS_2007
from drivers.serialbus.bcd import BcdFormat
from drivers.serialbus.framing import NEED_MORE

log = logging.getLogger("iotgw.demo")


# -- electrical model shared by the meter simulators ------------------------------------

@dataclass
class Load:
    """One supply: voltage, current and power factor wander; energy integrates power."""

    phases: int = 3
    nominal_current: float = 12.0
    energy_kwh: float = field(default_factory=lambda: random.uniform(1200, 9000))
    export_kwh: float = field(default_factory=lambda: random.uniform(0, 50))
    seed: float = field(default_factory=lambda: random.uniform(0, 100))
    _last: float = field(default_factory=time.monotonic)

    def step(self) -> None:
        now = time.monotonic()
        self.energy_kwh += self.power_w() * (now - self._last) / 3_600_000 * 60  # fast clock
        self._last = now

    def _t(self) -> float:
        return time.time() / 60 + self.seed

    def voltage(self, phase: int = 0) -> float:
        return 230 + 3 * math.sin(self._t() * 2 + phase) + random.uniform(-0.4, 0.4)

    def current(self, phase: int = 0) -> float:
        swing = 0.6 + 0.4 * math.sin(self._t() * 5 + phase * 1.3)
        return self.nominal_current * swing + random.uniform(0, 0.2)

    def power_factor(self, phase: int = 0) -> float:
        return 0.93 + 0.04 * math.sin(self._t() * 3 + phase)

    def phase_power_w(self, phase: int = 0) -> float:
        return self.voltage(phase) * self.current(phase) * self.power_factor(phase)

    def power_w(self) -> float:
        return sum(self.phase_power_w(p) for p in range(self.phases))

    def frequency(self) -> float:
        return 50 + 0.03 * math.sin(self._t() * 7) + random.uniform(-0.01, 0.01)

    def value(self, name: str, unit: str | None = None) -> float:
        """A plausible value for a point called ``name`` (profile or DL/T 645 names)."""
        kilo = unit is not None and unit.lower().startswith("k")
        phase = next((i for i, s in enumerate(("l1", "l2", "l3")) if s in name), 0)
        if name.endswith(("_a", "_b", "_c")):
            phase = "abc".index(name[-1])
        if "energy" in name:
            if "export" in name or "reverse" in name:
                return self.export_kwh
            return self.energy_kwh + (self.export_kwh if name == "energy_total" and
                                      self.phases == 3 else 0)
        if "frequency" in name:
            return self.frequency()
        if "factor" in name:
            return self.power_factor(phase)
        if "voltage" in name:
            line = "_l1_l2" in name or "_l2_l3" in name or "_l3_l1" in name
            return self.voltage(phase) * (math.sqrt(3) if line else 1)
        if "neutral" in name:
            return abs(self.current(0) - self.current(1)) / 2
        if "current" in name:
            return self.current(phase)
        if "power" in name:
            total = "total" in name or ("_l" not in name and not name.endswith(("_a", "_b", "_c")))
            watts = self.power_w() if total else self.phase_power_w(phase)
            if "apparent" in name:
                watts /= self.power_factor(phase)
            elif "reactive" in name:
                watts *= 0.3
            return watts / 1000 if kilo else watts
        return 0.0


@dataclass
class LeakingWater:
    """Values for the ``water-meter-ultrasonic`` profile (a :class:`ModbusMeters` load):
    short bursts of use with zero flow between them, until ``leak_after`` seconds after
    the start; from then on the flow never drops to zero (a running cistern)."""

    leak_after: float = 8.0
    leak_m3h: float = 0.06
    total_m3: float = field(default_factory=lambda: random.uniform(100, 900))
    started: float = field(default_factory=time.monotonic)
    _last: float = field(default_factory=time.monotonic)

    def flow(self) -> float:
        elapsed = time.monotonic() - self.started
        if elapsed >= self.leak_after:
            return self.leak_m3h + random.uniform(0, 0.01)
        return 0.9 if elapsed % 10 < 2 else 0.0  # a tap opened for 2 s in every 10

    def step(self) -> None:
        now = time.monotonic()
        self.total_m3 += self.flow() * (now - self._last) / 3600 * 60  # fast clock
        self._last = now

    def value(self, name: str, unit: str | None = None) -> float:
        values = {"flow_rate": self.flow, "total": lambda: self.total_m3,
                  "water_temperature": lambda: 14.5, "battery_voltage": lambda: 3.6}
        getter = values.get(name)
        return getter() if getter is not None else 0.0


# -- Modbus TCP ---------------------------------------------------------------------------

class ModbusMeters:
    """Simulated meters behind one Modbus TCP server on ``127.0.0.1:port`` (the server is
    drivers/modbus/client.py's ``RegisterServer``); units keyed by unit id.

    ``units`` maps unit id -> list of the gateway's resolved points for that device."""

    def __init__(self, port: int, units: dict[int, list[Any]],
                 loads: dict[int, Load | LeakingWater] | None = None) -> None:
        from drivers.modbus.client import TABLES, RegisterServer

        self.port = port
        self.points = units
        self.loads: dict[int, Load | LeakingWater] = loads or {u: Load() for u in units}
        self.tables: dict[int, dict[str, dict[int, Any]]] = {
            u: {table: {} for table in TABLES} for u in units}
        self.requests = 0
        self.server = RegisterServer(port, self.tables, on_request=self._count)
        self.refresh()

    def _count(self) -> None:
        self.requests += 1

    def refresh(self) -> None:
        for unit, points in self.points.items():
            load = self.loads[unit]
            load.step()
            for point in points:
                if point.is_bits:
                    continue
                value = load.value(point.name, point.unit)
                try:
                    words = point.encode(value)
                except (ValueError, OverflowError):
                    continue
                table = self.tables[unit][point.table]
                for i, word in enumerate(words):
                    table[point.address + i] = int(word)

    async def start(self) -> ModbusMeters:
        await self.server.start()
        return self

    async def run(self) -> None:
        """Keep the registers moving until cancelled."""
        while True:
            await asyncio.sleep(1.0)
            self.refresh()

    async def stop(self) -> None:
        await self.server.stop()


# -- pseudo-terminals ---------------------------------------------------------------------

class Pty:
    """A raw pty pair; the gateway opens :attr:`path`, the simulator uses the master.

    The simulator keeps the slave open too, so the master never sees EIO while the
    driver reopens the port."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def bcd_encode(value: float, fmt: BcdFormat) -> bytes:
    """``value`` in ``fmt`` as the meter stores it: BCD, lowest byte first."""
    number = round(abs(value) * 10**fmt.decimals) % 10**fmt.digits
    raw = bytearray(bytes.fromhex(str(number).rjust(fmt.size * 2, "0")))
    if fmt.signed and value < 0:
        raw[0] |= 0x80
    return bytes(reversed(raw))


@dataclass
class WaterMeter:
    address: str
    meter_type: int = 0x10
    total_m3: float = field(default_factory=lambda: random.uniform(100, 900))
    _last: float = field(default_factory=time.monotonic)

    def body(self) -> bytes:
        now = time.monotonic()
        self.total_m3 += (now - self._last) * random.uniform(0.002, 0.006)  # fast clock
        self._last = now
        total = BcdFormat.parse("XXXXXX.XX")
        stamp = time.strftime("%Y%m%d%H%M%S")
        settle = math.floor(self.total_m3 / 10) * 10
        return (bcd_encode(self.total_m3, total) + b"\x2c" + bcd_encode(settle, total)
                + b"\x2c" + bytes.fromhex(stamp)[::-1] + b"\x00\x00")


class MeterBus:
    """One RS-485 line with DL/T 645-2007 and CJ/T 188 meters behind it (a pty)."""

    def __init__(self, dlt645: dict[str, Load], cjt188: Iterable[WaterMeter]) -> None:
        self.pty = Pty()
        self.path = self.pty.path
        self.dlt645 = dlt645
        self.cjt188 = {m.address.rjust(14, "0"): m for m in cjt188}
        self.buffer = bytearray()
        self.requests = 0

    async def start(self) -> MeterBus:
        asyncio.get_running_loop().add_reader(self.pty.master, self._readable)
        return self

    def _readable(self) -> None:
        try:
            data = os.read(self.pty.master, 4096)
        except (BlockingIOError, OSError):
            return
        self.buffer += data
        while True:
            request = self._take()
            if request is None:
                return
            kind, raw = request
            self.requests += 1
            reply = self._answer_645(raw) if kind == "645" else self._answer_188(raw)
            if reply:
                self.pty.write(reply)

    def _take(self) -> tuple[str, bytes] | None:
        """The next complete request of either protocol; noise and bad frames dropped."""
        buf = self.buffer
        pos = 0
        while True:
            start = buf.find(0x68, pos)
            if start < 0:
                self.buffer.clear()
                return None
            waiting = False
            for kind, check in (("645", f645.check), ("188", f188.check)):
                verdict = check(bytes(buf), start)
                if verdict > 0:
                    raw = bytes(buf[start:start + verdict])
                    del buf[:start + verdict]
                    return kind, raw
                waiting = waiting or verdict == NEED_MORE
            if waiting:
                del buf[:start]
                return None
            pos = start + 1

    def _answer_645(self, raw: bytes) -> bytes:
        request = f645.decode(raw)
        load = self.dlt645.get(request.address)
        if load is None or request.is_reply or request.function != 0x11:
            return b""
        di_raw = request.data[:4]
        di = int.from_bytes(di_raw, "little")
        point = next((p for p in POINTS_2007.values() if p.di == di), None)
        if point is None:  # no such data: abnormal reply, error bit "no data requested"
            return f645.encode(request.address, 0xD1, b"\x02")
        load.step()
        value = load.value(point.name, point.unit)
        return f645.encode(request.address, 0x91, di_raw + bcd_encode(value, point.format))

    def _answer_188(self, raw: bytes) -> bytes:
        request = f188.decode(raw)
        meter = self.cjt188.get(request.address)
        if meter is None or request.is_reply or request.function != f188.READ_DATA:
            return b""
        data = request.data
        if data[:2] not in (b"\x90\x1f", b"\x1f\x90"):
            return f188.encode(meter.meter_type, request.address, 0xC1, data[:3] + b"\x01\x00")
        return f188.encode(meter.meter_type, request.address, 0x81, data[:3] + meter.body())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.pty.master)
        self.pty.close()


class CardReader:
    """A gate reader on its own pty, printing one CRLF-terminated record per swipe."""

    def __init__(self, cards: list[str], every: float = 4.0) -> None:
        self.pty = Pty()
        self.path = self.pty.path
        self.cards = cards
        self.every = every
        self.swipes = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pty.master, self._drain)
        try:
            await asyncio.sleep(1.0)
            while True:
                card = random.choice(self.cards)
                direction = random.choice(("IN", "OUT"))
                self.pty.write(f"CARD:{card};DIR:{direction}\r\n".encode())
                self.swipes += 1
                await asyncio.sleep(self.every * random.uniform(0.5, 1.5))
        finally:
            loop.remove_reader(self.pty.master)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.pty.master, 4096)

    def close(self) -> None:
        self.pty.close()


class DoorController:
    """A door controller on its own pty printing ``EVT:door_open`` / ``EVT:door_closed``:
    brief openings every ``every`` seconds, and once, ``hold_at`` seconds after the
    start, the door held open for ``hold_for`` seconds (someone wedged it)."""

    def __init__(self, hold_at: float = 6.0, hold_for: float = 75.0,
                 every: float = 15.0) -> None:
        self.pty = Pty()
        self.path = self.pty.path
        self.hold_at = hold_at
        self.hold_for = hold_for
        self.every = every
        self.events = 0

    def _event(self, name: str) -> None:
        self.pty.write(f"EVT:{name}\r\n".encode())
        self.events += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pty.master, self._drain)
        try:
            await asyncio.sleep(self.hold_at)
            self._event("door_open")
            await asyncio.sleep(self.hold_for)
            self._event("door_closed")
            while True:
                await asyncio.sleep(self.every * random.uniform(0.5, 1.5))
                self._event("door_open")
                await asyncio.sleep(3)
                self._event("door_closed")
        finally:
            loop.remove_reader(self.pty.master)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.pty.master, 4096)

    def close(self) -> None:
        self.pty.close()


# -- MQTT plate camera --------------------------------------------------------------------

PLATES = ["京A12345", "赣GZ7S13", "粤B8K2L9", "沪C5D77E", "苏E0M123"]


def plate_message(serial: str, plate: str, camera: str) -> dict[str, Any]:
    now = int(time.time())
    return {"id": random.randint(1, 1 << 30), "sn": serial, "name": "ivs_result",
            "version": "1.0", "timestamp": now,
            "payload": {"Type": "ivs_result", "AlarmInfoPlate": {
                "channel": 0, "deviceName": camera, "ipaddr": "10.0.0.9",
                "result": {"PlateResult": {
                    "license": base64.b64encode(plate.encode()).decode(),
                    "confidence": random.randint(80, 99), "colorType": 1, "type": 1,
                    "direction": random.choice((0, 1)), "triggerType": 8,
                    "timeStamp": {"Timeval": {"sec": now, "usec": 0}}}}}}}


@dataclass
class PlateCamera:
    host: str
    port: int
    topic: str
    serial: str = "e5f1a0c3"
    username: str | None = None
    password: str | None = None
    every: float = 6.0
    published: int = 0
    error: str | None = None

    async def run(self) -> None:
        """Publish a plate event every ``every`` seconds (+-50%) over the project's own
        MQTT connection (gateway/mqtt/client.py: reconnects by itself; QoS 1)."""
        from gateway.config.models import MqttSection
        from gateway.mqtt.client import MqttConnection

        settings = MqttSection(host=self.host, port=self.port, username=self.username,
                               password=self.password, base_topic="iotgw-demo/camera")
        connection = MqttConnection(settings, f"iotgw-demo-camera-{os.getpid()}",
                                    on_message=lambda batch: None)
        link = asyncio.create_task(connection.run(), name="demo:plate-camera-mqtt")
        try:
            while True:
                await asyncio.sleep(self.every * random.uniform(0.5, 1.5))
                if not connection.connected:
                    self.error = connection.stats.last_error or "not connected"
                    continue
                self.error = None
                message = plate_message(self.serial, random.choice(PLATES), "gate-north")
                if connection.publish(self.topic, json.dumps(message), qos=1, queue=False):
                    self.published += 1
        finally:
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)
