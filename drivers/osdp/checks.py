"""Cross-item config checks for OSDP lines (the second validation pass)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from drivers.osdp.config import OsdpConfig
from gateway.config.crosscheck import Finding


def check_osdp_lines(config: Any) -> Iterator[Finding]:
    """Readers on one port agree on its speed, and the port is not also a serial bus
    (two drivers cannot both own one RS-485 adapter). Duplicate addresses on a line are
    the core's duplicate-address check (``bus_address``)."""
    bus_ports = {bus.port: name for name, bus in config.buses.items()
                 if getattr(bus, "port", None) is not None}
    first: dict[str, tuple[int, OsdpConfig]] = {}
    for index, device in enumerate(config.devices):
        if not isinstance(device, OsdpConfig) or not device.enabled:
            continue
        if device.port in bus_ports:
            yield (("devices", index, "port"),
                   f"{device.port} is also the port of bus {bus_ports[device.port]!r}; "
                   "an OSDP line cannot share an adapter with other serial devices")
        if device.port not in first:
            first[device.port] = (index, device)
            continue
        other_index, other = first[device.port]
        if device.baudrate != other.baudrate:
            yield (("devices", index, "baudrate"),
                   f"readers on one line share its speed: {other.id!r} (devices[{other_index}])"
                   f" on {device.port} uses {other.baudrate}")
