"""The demo's devices: the drivers' own simulators (``drivers/<name>/sim.py``) given
live values, and the one RS-485 line the DL/T 645 and CJ/T 188 meters share.

* :class:`Load` - one supply whose voltage, current and power factor wander and whose
  energy counter integrates power (a fast clock: an hour of energy a minute).
* :class:`ModbusMeters` - units of drivers/modbus/sim.py's :class:`TcpSim` on a loopback
  port, their registers filled from the points the gateway will read (its profile).
* :class:`MeterBus` - a pseudo-terminal where drivers/dlt645/sim.py's and
  drivers/cjt188/sim.py's bus simulators answer on one line; DL/T 645 values come from a
  :class:`Load` (:class:`LiveMeter645`), CJ/T 188 water totals grow (:class:`WaterMeter`).

The simulators were written from the standards and not from the drivers' codecs (so the
tests catch a shared misunderstanding); only the line splitter here uses the codecs, to
tell which protocol a request belongs to, as a shared line's meters each do for their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from drivers.cjt188 import frame as f188
from drivers.cjt188.sim import Cjt188Bus, Meter188
from drivers.dlt645 import frame as f645
from drivers.dlt645.points import POINTS_2007
from drivers.dlt645.sim import Dlt645Bus, Meter645
from drivers.modbus.sim import Device, TcpSim, Units
from drivers.serialbus.bcd import BcdFormat
from drivers.serialbus.framing import NEED_MORE
from drivers.serialbus.sim import PtySerial, StreamDevice

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


def bcd_encode(value: float, fmt: BcdFormat) -> bytes:
    """``value`` in ``fmt`` as the meter stores it: BCD, lowest byte first."""
    number = round(abs(value) * 10**fmt.decimals) % 10**fmt.digits
    raw = bytearray(bytes.fromhex(str(number).rjust(fmt.size * 2, "0")))
    if fmt.signed and value < 0:
        raw[0] |= 0x80
    return bytes(reversed(raw))


# -- Modbus TCP ---------------------------------------------------------------------------

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


class ModbusMeters:
    """Simulated meters behind one Modbus TCP server on ``127.0.0.1:port`` (the Modbus
    driver's :class:`~drivers.modbus.sim.TcpSim`); units keyed by unit id.

    ``units`` maps unit id -> list of the gateway's resolved points for that device."""

    def __init__(self, port: int, units: dict[int, list[Any]],
                 loads: dict[int, Load | LeakingWater] | None = None) -> None:
        self.port = port
        self.points = units
        self.loads: dict[int, Load | LeakingWater] = loads or {u: Load() for u in units}
        self.devices = {u: Device() for u in units}
        self.units = Units(self.devices, keep_requests=False)
        self.server = TcpSim(self.units, port)
        self.refresh()

    @property
    def requests(self) -> int:
        return self.units.request_total

    def refresh(self) -> None:
        for unit, points in self.points.items():
            load = self.loads[unit]
            load.step()
            device = self.devices[unit]
            for point in points:
                if point.is_bits:
                    continue
                value = load.value(point.name, point.unit)
                try:
                    words = point.encode(value)
                except (ValueError, OverflowError):
                    continue
                table = getattr(device, point.table)
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
        with contextlib.suppress(Exception):
            await self.server.stop()


# -- RS-485: DL/T 645 and CJ/T 188 on one line ---------------------------------------------

class LiveMeter645(Meter645):
    """A DL/T 645-2007 meter whose values are computed from its :class:`Load` when read."""

    def __init__(self, address: str, load: Load) -> None:
        super().__init__(address)
        self.load = load

    def value(self, di: int) -> bytes | None:
        point = POINTS_BY_DI.get(di)
        if point is None:
            return None
        self.load.step()
        return bcd_encode(self.load.value(point.name, point.unit), point.format)


POINTS_BY_DI = {p.di: p for p in POINTS_2007.values()}


@dataclass
class WaterMeter(Meter188):
    """A CJ/T 188 cold-water meter whose total grows (a fast clock)."""

    total_m3: float = field(default_factory=lambda: random.uniform(100, 900))
    _last: float = field(default_factory=time.monotonic)

    def reading(self) -> bytes:
        now = time.monotonic()
        self.total_m3 += (now - self._last) * random.uniform(0.002, 0.006)
        self._last = now
        total = BcdFormat.parse("XXXXXX.XX")
        stamp = time.strftime("%Y%m%d%H%M%S")
        settle = math.floor(self.total_m3 / 10) * 10
        return (bcd_encode(self.total_m3, total) + b"\x2c" + bcd_encode(settle, total)
                + b"\x2c" + bytes.fromhex(stamp)[::-1] + b"\x00\x00")


class SharedLine(StreamDevice):
    """One line, two protocols: each complete request goes to the bus simulator of its
    protocol; noise and bad frames are dropped (the meters stay silent)."""

    def __init__(self, dlt645: Dlt645Bus, cjt188: Cjt188Bus) -> None:
        super().__init__(keep_requests=False)  # runs until stopped: count, do not keep
        self.buses: tuple[tuple[Any, StreamDevice], ...] = (
            (f645.check, dlt645), (f188.check, cjt188))
        self._to: StreamDevice = dlt645

    def take_frame(self) -> bytes | None:
        buf = self.buffer
        pos = 0
        while True:
            start = buf.find(0x68, pos)
            if start < 0:
                buf.clear()
                return None
            waiting = False
            for check, bus in self.buses:
                verdict = check(bytes(buf), start)
                if verdict > 0:
                    frame = bytes(buf[start:start + verdict])
                    del buf[:start + verdict]
                    self._to = bus
                    return frame
                waiting = waiting or verdict == NEED_MORE
            if waiting:
                del buf[:start]
                return None
            pos = start + 1

    def answer(self, frame: bytes) -> bytes:
        return self._to.answer(frame)


class MeterBus:
    """One RS-485 line (a pty) with DL/T 645-2007 meters, keyed by address with the load
    each measures, and CJ/T 188 water meters behind it."""

    def __init__(self, dlt645: dict[str, Load], cjt188: Iterable[WaterMeter]) -> None:
        meters = [LiveMeter645(address, load) for address, load in dlt645.items()]
        self.line = SharedLine(Dlt645Bus(meters, keep_requests=False),
                               Cjt188Bus(list(cjt188), keep_requests=False))
        self.serial = PtySerial(self.line)
        self.path = self.serial.path

    @property
    def requests(self) -> int:
        return self.line.request_count

    async def start(self) -> MeterBus:
        self.serial.start()
        return self

    async def stop(self) -> None:
        await asyncio.to_thread(self.serial.close)
