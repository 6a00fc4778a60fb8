"""Shared by the serial drivers' tests: the pty line settings and DL/T 645 meters built
from the driver's point tables (the values as the meter stores them)."""

from __future__ import annotations

from drivers.dlt645.points import POINTS_2007
from drivers.dlt645.sim import Meter645
from drivers.serialbus.sim import bcd_le

BUS = {"baudrate": 2400, "parity": "N", "timeout": 0.3}
"""Parity N on ptys: Linux ptys refuse PARENB when a port is reopened (EINVAL from
tcsetattr), which real UARTs accept; the socket:// test uses the real default 8E1."""


def meter_with(address: str, table: dict, values: dict, version: str = "2007") -> Meter645:
    return Meter645(address, {table[name].di: bcd_le(digits, neg)
                              for name, (digits, neg, _) in values.items()}, version=version)


def simple_meter(address: str, kwh: str = "00012345") -> Meter645:
    return meter_with(address, POINTS_2007, {
        "energy_total": (kwh, False, 0), "voltage_a": ("2200", False, 0),
        "current_a": ("000500", True, 0), "power_total": ("000110", False, 0)})
