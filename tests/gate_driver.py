"""A writable test device for ops-command tests: records every write it receives.

Registered as driver ``test_gate`` only while a test module that uses the
``test_gate_driver`` fixture runs, so other tests see the real driver set."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from gateway.driver import DeviceConfigBase, Driver
from gateway.registry import DRIVER_TYPES, register_driver

WRITES: list[tuple[str, str, Any]] = []
"""(device id, point, value) of every write that reached a test_gate device."""


class GateConfig(DeviceConfigBase):
    driver: Literal["test_gate"]


class GateDriver(Driver):
    async def run(self) -> None:
        await asyncio.Event().wait()

    async def write(self, point: str, value: Any) -> dict[str, Any]:
        WRITES.append((self.config.id, point, value))
        return {"written": True}


@pytest.fixture(scope="module")
def test_gate_driver() -> Iterator[list[tuple[str, str, Any]]]:
    register_driver(GateConfig, GateDriver)
    WRITES.clear()
    yield WRITES
    DRIVER_TYPES.pop("test_gate", None)
