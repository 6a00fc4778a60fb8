"""Running serial drivers in-process against simulators: contexts, emit capture, waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.config.models import SerialBus
from gateway.driver import DeviceContext, Driver
from gateway.reading import Reading
from gateway.registry import load_drivers
from gateway.shared import SharedResources
from tests.support.wait import eventually


class Harness:
    """Drivers sharing one SharedResources (so meters on a bus share a port)."""

    def __init__(self) -> None:
        self.resources = SharedResources()
        self.readings: dict[str, list[Reading]] = {}
        self.contexts: dict[str, DeviceContext] = {}
        self.drivers: dict[str, Driver] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def _emit(self, device_id: str, readings: Any) -> None:
        self.readings.setdefault(device_id, []).extend(readings)

    def add(self, config: dict[str, Any], bus: dict[str, Any] | None = None,
            bus_name: str = "line") -> Driver:
        types = load_drivers()
        kind = types[config["driver"]]
        cfg = kind.config_model.model_validate(config)
        bus_cfg = SerialBus.model_validate({"type": "serial", **bus}) if bus else None
        ctx = DeviceContext(cfg.id, self._emit, bus_name=bus_name if bus else None,
                            bus=bus_cfg, resources=self.resources)
        driver = kind.driver_class(cfg, ctx)
        self.contexts[cfg.id] = ctx
        self.drivers[cfg.id] = driver
        return driver

    def start(self) -> None:
        self.tasks = [asyncio.create_task(d.run()) for d in self.drivers.values()]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        """Hang guard: fails if the condition never holds, at once if a driver crashed."""

        def probe() -> bool:
            for task in self.tasks:
                if task.done() and not task.cancelled():
                    failure = task.exception()
                    if failure is not None:
                        raise failure
            return predicate()

        await eventually(probe, within=within, what=lambda: (
            f"condition; readings: {self.counts()}, states: {self.states()}"))

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.readings.items()}

    def states(self) -> dict[str, Any]:
        return {k: (c.status.state.value, c.status.last_error, c.status.counters)
                for k, c in self.contexts.items()}

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for result in results:  # a driver that crashed, or failed to shut down, fails the test
            if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError):
                raise result
        assert not self.resources.active(), "shared port not closed after the last device"
