"""Run Modbus drivers in-process against simulators, collecting what they emit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.config.models import SerialBus, TcpBus
from gateway.driver import DeviceContext
from gateway.reading import Reading
from gateway.shared import SharedResources


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

    async def wait_for(self, predicate: Any, limit: float = 20.0) -> None:
        """Hang guard only: tests assert on counts, not on how long this took."""
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110 - polling driver counters
                await asyncio.sleep(0.01)


def tcp_bus(port: int, timeout: float = 0.5) -> TcpBus:
    return TcpBus(type="tcp", host="127.0.0.1", port=port, timeout=timeout)


def serial_bus(port: str, timeout: float = 0.3, baudrate: int = 9600,
               inter_frame_delay: float | None = None) -> SerialBus:
    return SerialBus(type="serial", port=port, baudrate=baudrate, timeout=timeout,
                     inter_frame_delay=inter_frame_delay)
