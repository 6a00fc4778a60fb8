"""Config checks that need more than one device's model: buses and profiles."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from drivers.modbus.config import ModbusConfig
from drivers.modbus.planner import coalesce
from drivers.modbus.profiles import PointsProblem, limits_for, resolve_points
from gateway.errors import ConfigError

Finding = tuple[tuple[str | int, ...], str]


def check_modbus_devices(config: Any) -> Iterator[Finding]:
    """Unit ids valid for the bus type; profiles load; points fit the device's limits."""
    for index, device in enumerate(config.devices):
        if not isinstance(device, ModbusConfig):
            continue
        bus = config.buses.get(device.bus)
        if bus is not None and bus.type == "serial" and not 1 <= device.unit <= 247:
            yield (("devices", index, "unit"),
                   f"unit must be 1..247 on a serial bus, got {device.unit}")
        try:
            points, _ = resolve_points(device)
            coalesce(points, limits_for(device))
        except ConfigError as exc:
            setting = _setting(device, exc)
            for problem in exc.problems:
                yield (("devices", index, setting), problem)
        except ValueError as exc:
            yield (("devices", index), str(exc))


def _setting(device: ModbusConfig, exc: ConfigError) -> str:
    """The device setting a points problem is reported at (path and line): the one at
    fault rather than always ``profile`` (a wrong ``select`` name was reported at the
    profile's line)."""
    if isinstance(exc, PointsProblem) and exc.setting in device.model_fields_set:
        return exc.setting
    return "profile" if device.profile else "points"
