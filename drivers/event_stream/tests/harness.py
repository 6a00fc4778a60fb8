"""A real gateway in-process with a file sink, for the HTTP device drivers' tests: configs
in, committed points and device state changes out."""

from __future__ import annotations

import asyncio
import contextlib
import re
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.loader import load_config
from gateway.driver import DeviceStatus
from gateway.reading import FieldValue
from gateway.runtime import Gateway

FIELD = re.compile(r'([^=,]+)=("(?:[^"\\]|\\.)*"|[^,]*)')


@dataclass(frozen=True)
class Point:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_ns: int


def _value(text: str) -> FieldValue:
    if text.startswith('"'):
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text.endswith("i"):
        return int(text[:-1])
    if text in ("t", "T", "true", "True"):
        return True
    if text in ("f", "F", "false", "False"):
        return False
    return float(text)


def parse_line(line: str) -> Point:
    """Line protocol as the file sink writes it (no escaped spaces in our tags)."""
    head, rest = line.split(" ", 1)
    fields_text, stamp = rest.rsplit(" ", 1)
    measurement, *tags = head.split(",")
    fields = {m.group(1): _value(m.group(2)) for m in FIELD.finditer(fields_text)}
    return Point(measurement, dict(t.split("=", 1) for t in tags), fields, int(stamp))


def read_points(data_dir: Path) -> list[Point]:
    points = []
    for path in sorted((data_dir / "lines").glob("*.lp")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                points.append(parse_line(line))
    return points


def write_config(path: Path, devices: str, extra: str = "") -> Path:
    path.write_text(
        "gateway: {id: gw-http, site: http-site, data_dir: data}\n"
        "buffer: {flush_interval: 50ms}\n"
        "sinks: [{type: file}]\n" + extra +
        "devices:\n" + textwrap.indent(textwrap.dedent(devices), "  "))
    return path


class Running:
    def __init__(self, gateway: Gateway, data_dir: Path) -> None:
        self.gateway = gateway
        self.data_dir = data_dir
        self.states: list[tuple[float, str, str, str | None]] = []
        """(monotonic time, device, state, last_error) for every change."""
        gateway.add_state_listener(self._changed)

    def _changed(self, device_id: str, status: DeviceStatus) -> None:
        self.states.append((time.monotonic(), device_id, str(status.state), status.last_error))

    def points(self, measurement: str | None = None, device: str | None = None
               ) -> list[Point]:
        return [p for p in read_points(self.data_dir)
                if (measurement is None or p.measurement == measurement)
                and (device is None or p.tags.get("device") == device)]

    def status(self, device_id: str) -> DeviceStatus:
        return self.gateway.devices[device_id].status

    def counters(self, device_id: str) -> dict[str, int]:
        return dict(self.gateway.devices[device_id].status.counters)

    async def until(self, predicate: Callable[[], Any], timeout: float = 30.0,  # noqa: ASYNC109
                    what: str = "condition") -> Any:
        """Hang guard only: poll until ``predicate()`` is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} never came")


@contextlib.asynccontextmanager
async def running(config: Path) -> AsyncIterator[Running]:
    loaded = load_config(config)
    gateway = Gateway(loaded)
    task = asyncio.create_task(gateway.run())
    run = Running(gateway, loaded.data_dir)
    try:
        for _ in range(400):
            if gateway.pipeline is not None and gateway.supervisor is not None:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.025)
        yield run
    finally:
        gateway.request_stop()
        async with asyncio.timeout(30):
            await task
