"""Data identifiers (DIs) of the common points, per protocol version.

One table per version: the driver looks names up here; adding a point is one row. Names
become the field names of the ``energy_meter`` reading.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.serialbus.bcd import BcdFormat


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    di: int
    format: BcdFormat
    unit: str
    meaning: str


def _table(rows: list[tuple[str, int, str, str, str]]) -> dict[str, Point]:
    return {name: Point(name, di, BcdFormat.parse(fmt), unit, meaning)
            for name, di, fmt, unit, meaning in rows}


_TARIFFS = ("t1", "t2", "t3", "t4")  # sharp, peak, flat, valley on most Chinese meters
_PHASES = ("a", "b", "c")

POINTS_2007: dict[str, Point] = _table([
    ("energy_total", 0x00000000, "XXXXXX.XX", "kWh", "combined active energy, total"),
    *[(f"energy_total_{t}", 0x00000100 + 0x100 * i, "XXXXXX.XX", "kWh",
       f"combined active energy, tariff {i + 1}") for i, t in enumerate(_TARIFFS)],
    ("energy_forward", 0x00010000, "XXXXXX.XX", "kWh", "forward active energy, total"),
    *[(f"energy_forward_{t}", 0x00010100 + 0x100 * i, "XXXXXX.XX", "kWh",
       f"forward active energy, tariff {i + 1}") for i, t in enumerate(_TARIFFS)],
    ("energy_reverse", 0x00020000, "XXXXXX.XX", "kWh", "reverse active energy, total"),
    *[(f"energy_reverse_{t}", 0x00020100 + 0x100 * i, "XXXXXX.XX", "kWh",
       f"reverse active energy, tariff {i + 1}") for i, t in enumerate(_TARIFFS)],
    *[(f"voltage_{p}", 0x02010100 + 0x100 * i, "XXX.X", "V", f"voltage phase {p.upper()}")
      for i, p in enumerate(_PHASES)],
    *[(f"current_{p}", 0x02020100 + 0x100 * i, "-XXX.XXX", "A", f"current phase {p.upper()}")
      for i, p in enumerate(_PHASES)],
    ("power_total", 0x02030000, "-XX.XXXX", "kW", "active power, total"),
    *[(f"power_{p}", 0x02030100 + 0x100 * i, "-XX.XXXX", "kW",
       f"active power phase {p.upper()}") for i, p in enumerate(_PHASES)],
    ("reactive_power_total", 0x02040000, "-XX.XXXX", "kvar", "reactive power, total"),
    *[(f"reactive_power_{p}", 0x02040100 + 0x100 * i, "-XX.XXXX", "kvar",
       f"reactive power phase {p.upper()}") for i, p in enumerate(_PHASES)],
    ("power_factor", 0x02060000, "-X.XXX", "", "power factor, total"),
    *[(f"power_factor_{p}", 0x02060100 + 0x100 * i, "-X.XXX", "",
       f"power factor phase {p.upper()}") for i, p in enumerate(_PHASES)],
    ("frequency", 0x02800002, "XX.XX", "Hz", "grid frequency"),
])

POINTS_1997: dict[str, Point] = _table([
    ("energy_forward", 0x9010, "XXXXXX.XX", "kWh", "forward active energy, total"),
    *[(f"energy_forward_{t}", 0x9011 + i, "XXXXXX.XX", "kWh",
       f"forward active energy, tariff {i + 1}") for i, t in enumerate(_TARIFFS)],
    ("energy_reverse", 0x9020, "XXXXXX.XX", "kWh", "reverse active energy, total"),
    *[(f"voltage_{p}", 0xB611 + i, "XXX", "V", f"voltage phase {p.upper()}")
      for i, p in enumerate(_PHASES)],
    *[(f"current_{p}", 0xB621 + i, "XX.XX", "A", f"current phase {p.upper()}")
      for i, p in enumerate(_PHASES)],
    ("power_total", 0xB630, "XX.XXXX", "kW", "active power, total"),
    *[(f"power_{p}", 0xB631 + i, "XX.XXXX", "kW", f"active power phase {p.upper()}")
      for i, p in enumerate(_PHASES)],
    ("reactive_power_total", 0xB640, "XX.XX", "kvar", "reactive power, total"),
    ("power_factor", 0xB650, "X.XXX", "", "power factor, total"),
])

DEFAULT_POINTS = {
    "2007": ("energy_total", "voltage_a", "current_a", "power_total"),
    "1997": ("energy_forward", "voltage_a", "current_a", "power_total"),
}
