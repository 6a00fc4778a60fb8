"""Support for the Modbus driver's tests (not a test module): drivers run in-process
against drivers/modbus/sim.py's servers, collecting what they emit; the meters, points
and lines several test files share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.points import Point
from drivers.modbus.sim import Device, PtyRelay, RtuSim, Units
from gateway.config.models import SerialBus, TcpBus
from gateway.driver import DeviceContext, DeviceState
from gateway.reading import Reading
from gateway.shared import SharedResources
from tests.support.wait import eventually


class Fleet:
    """Several devices sharing buses, like the runtime wires them."""

    def __init__(self, buses: dict[str, SerialBus | TcpBus]) -> None:
        self.buses = buses
        self.resources = SharedResources()
        self.drivers: dict[str, ModbusDriver] = {}
        self.readings: dict[str, list[Reading]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, **config: Any) -> ModbusDriver:
        cfg = ModbusConfig.model_validate({"driver": "modbus", **config})
        self.readings[cfg.id] = []

        async def emit(device_id: str, readings: Sequence[Reading]) -> None:
            self.readings[device_id].extend(readings)

        ctx = DeviceContext(cfg.id, emit, bus_name=cfg.bus, bus=self.buses[cfg.bus],
                            resources=self.resources)
        driver = ModbusDriver(cfg, ctx)
        self.drivers[cfg.id] = driver
        return driver

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(d.run()) for d in self.drivers.values()]
        await self.wait_for(lambda: all(d.bus is not None for d in self.drivers.values()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError):
                raise result
        assert self.resources.active() == []

    async def wait_for(self, predicate: Callable[[], object], limit: float = 20.0) -> None:
        """Hang guard only: tests assert on counts, not on how long this took."""
        await eventually(predicate, within=limit, every=0.01, what=lambda: (
            f"condition; readings: { {k: len(v) for k, v in self.readings.items()} }"))


def tcp_bus(port: int, timeout: float = 0.5) -> TcpBus:
    return TcpBus(type="tcp", host="127.0.0.1", port=port, timeout=timeout)


def serial_bus(port: str, timeout: float = 0.3, baudrate: int = 9600,
               inter_frame_delay: float | None = None) -> SerialBus:
    return SerialBus(type="serial", port=port, baudrate=baudrate, timeout=timeout,
                     inter_frame_delay=inter_frame_delay)


# -- shared by several test files ---------------------------------------------------------

CASES = YAML(typ="safe").load(
    (Path(__file__).parent.parent / "testcases" / "decode" / "all_types.yaml").read_text()
)["cases"]


def layout() -> tuple[list[dict], Device, dict[str, object]]:
    """Every testcase point at its own address (with a hole-free gap of 3 between)."""
    points, device, expected = [], Device(), {}
    address = 0
    for case in CASES:
        spec = {**case["point"], "address": address}
        point = Point.model_validate(spec)
        table = getattr(device, point.table)
        for i, word in enumerate(case["registers"]):
            table[address + i] = word
        points.append(spec)
        expected[point.name] = case["value"]
        address += point.count + 3
    return points, device, expected


POINTS = [
    {"name": "voltage", "table": "input", "address": 0, "type": "float32", "order": "CDAB"},
    {"name": "energy", "table": "input", "address": 2, "type": "uint32", "scale": 0.01,
     "precision": 2},
    {"name": "status", "table": "holding", "address": 0x10},
]


def meter(unit: int) -> Device:
    device = Device()
    for spec, value in zip(POINTS, (230.5, 1234.56 + unit, unit), strict=True):
        device.put(Point.model_validate(spec), value)
    return device


GOOD = {u: {"voltage": 230.5, "energy": 1234.56 + u, "status": u} for u in (1, 2)}


def crc16(frame: bytes) -> bytes:
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


class Line:
    """Units 1 and 2 (the meters of test_modbus_rtu) on one pty line, one driver each."""

    def __init__(self, mangle: Callable[[str, bytes], bytes] | None = None,
                 interval: float = 0.25, timeout: float = 0.1) -> None:
        self.units = Units({1: meter(1), 2: meter(2)})
        self.mangle = mangle
        self.interval, self.timeout = interval, timeout

    async def __aenter__(self) -> Line:
        self.relay = await PtyRelay(self.mangle).start()
        self.server = await RtuSim(self.units, self.relay.server_port).start()
        self.fleet = Fleet({"rs485": serial_bus(self.relay.client_port, timeout=self.timeout)})
        self.healthy = self.fleet.add(id="u1", bus="rs485", unit=1, points=POINTS,
                                      interval=self.interval, retries=1)
        self.odd = self.fleet.add(id="u2", bus="rs485", unit=2, points=POINTS,
                                  interval=self.interval, retries=1, backoff_max=0.5)
        await self.fleet.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.fleet.stop()
        finally:
            await self.server.stop()
            await self.relay.stop()

    def assert_healthy_kept_its_schedule(self) -> None:
        """u1 answered every poll, never skipped a slot, and counted no problem."""
        driver = self.healthy
        assert driver.ctx.status.state is DeviceState.ONLINE
        assert driver.timer.missed == 0
        assert {k: v for k, v in driver.ctx.status.counters.items() if v} == {}
        readings = self.fleet.readings["u1"]
        assert len(readings) >= driver.cycles - 1 >= 1
        assert all(dict(r.fields) == GOOD[1] for r in readings)
