"""Reply bodies of CJ/T 188 read-data (DI 901F), as layout tables per meter family.

Water and gas meters answer current total + unit, settlement-day total + unit, meter time
and status; heat meters a longer list. Each row says how to decode one item, so a new
layout is a new table, not new code. Quantities with a unit byte are converted to one
unit per kind (m3, kWh, kW, m3/h), so a series never mixes litres and cubic metres.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from drivers.serialbus.bcd import BadValue, BcdFormat
from gateway.reading import FieldValue

DI_READ_DATA = 0x901F
DI_READ_ADDRESS = 0x810A

# unit byte -> (kind, factor to the canonical unit of that kind)
UNITS: dict[int, tuple[str, float]] = {
    0x29: ("volume", 0.001),  # L -> m3
    0x2C: ("volume", 1.0),  # m3
    0x02: ("energy", 0.001),  # Wh -> kWh
    0x05: ("energy", 1.0),  # kWh
    0x08: ("energy", 1000.0),  # MWh
    0x0A: ("energy", 100_000.0),  # MWh x 100
    0x01: ("energy", 1 / 3_600_000),  # J
    0x0B: ("energy", 1 / 3600),  # kJ
    0x0E: ("energy", 1 / 3.6),  # MJ
    0x11: ("energy", 1000 / 3.6),  # GJ
    0x13: ("energy", 100_000 / 3.6),  # GJ x 100
    0x14: ("power", 0.001),  # W -> kW
    0x17: ("power", 1.0),  # kW
    0x1A: ("power", 1000.0),  # MW
    0x32: ("flow", 0.001),  # L/h -> m3/h
    0x35: ("flow", 1.0),  # m3/h
}

VALVE = {0b00: "open", 0b01: "closed", 0b11: "abnormal", 0b10: "unknown"}


class DataError(ValueError):
    """A reply body that does not fit the layout."""


@dataclass(frozen=True)
class Item:
    name: str
    size: int
    decode: Callable[[bytes], dict[str, FieldValue]]


def _quantity(name: str, fmt: str) -> Item:
    bcd = BcdFormat.parse(fmt)

    def decode(raw: bytes) -> dict[str, FieldValue]:
        unit = UNITS.get(raw[bcd.size])
        if unit is None:
            raise DataError(f"{name}: unknown unit code 0x{raw[bcd.size]:02X}")
        value = bcd.decode(raw[:bcd.size]) * unit[1]
        return {name: round(value, 6)}

    return Item(name, bcd.size + 1, decode)


def _plain(name: str, fmt: str) -> Item:
    bcd = BcdFormat.parse(fmt)
    return Item(name, bcd.size, lambda raw: {name: bcd.decode(raw)})


def _meter_time(raw: bytes) -> dict[str, FieldValue]:
    """ss mm hh DD MM YYlow YYhigh, BCD -> ISO text (the meter's own clock)."""
    text = raw[::-1].hex()  # YYYYMMDDhhmmss
    if not text.isdigit():
        raise DataError("meter time is not BCD")
    iso = f"{text[0:4]}-{text[4:6]}-{text[6:8]}T{text[8:10]}:{text[10:12]}:{text[12:14]}"
    return {"meter_time": iso}


def _status(raw: bytes) -> dict[str, FieldValue]:
    st1 = raw[0]
    return {"valve": VALVE[st1 & 0b11], "battery_low": bool(st1 & 0b100),
            "status": int.from_bytes(raw[:2], "little")}


_TIME = Item("meter_time", 7, _meter_time)
_STATUS = Item("status", 2, _status)

LAYOUTS: dict[str, tuple[Item, ...]] = {
    "volume": (
        _quantity("total", "XXXXXX.XX"),
        _quantity("settlement_total", "XXXXXX.XX"),
        _TIME, _STATUS),
    "heat": (
        _quantity("settlement_heat", "XXXXXX.XX"),
        _quantity("heat", "XXXXXX.XX"),
        _quantity("heat_power", "XXXXXX.XX"),
        _quantity("flow_rate", "XXXX.XXXX"),
        _quantity("total_volume", "XXXXXX.XX"),
        _plain("supply_temp", "XXXX.XX"),
        _plain("return_temp", "XXXX.XX"),
        _plain("working_hours", "XXXXXX"),
        _TIME, _STATUS),
}

FAMILY: dict[int, str] = {0x10: "volume", 0x11: "volume", 0x12: "volume", 0x13: "volume",
                          0x30: "volume", 0x40: "volume",
                          0x20: "heat", 0x21: "heat", 0x22: "heat"}

MEASUREMENT: dict[int, str] = {0x10: "water_meter", 0x11: "water_meter", 0x12: "water_meter",
                               0x13: "water_meter", 0x20: "heat_meter", 0x21: "heat_meter",
                               0x22: "heat_meter", 0x30: "gas_meter", 0x40: "meter"}


def decode_read_data(meter_type: int, body: bytes) -> dict[str, FieldValue]:
    """Body after DI and SER -> fields."""
    layout = LAYOUTS[FAMILY.get(meter_type, "volume")]
    need = sum(item.size for item in layout)
    if len(body) < need:
        raise DataError(f"reply body has {len(body)} bytes, the layout needs {need}")
    fields: dict[str, FieldValue] = {}
    pos = 0
    for item in layout:
        try:
            fields.update(item.decode(body[pos:pos + item.size]))
        except BadValue as exc:
            raise DataError(f"{item.name}: {exc}") from None
        pos += item.size
    return fields


def di_bytes(di: int, order: str) -> bytes:
    """2004 practice sends 90 1F (high byte first), 2018 practice 1F 90."""
    return di.to_bytes(2, "big" if order == "2004" else "little")


def di_matches(raw: bytes, di: int) -> bool:
    """Replies are accepted in either byte order, whatever we sent."""
    return raw in (di.to_bytes(2, "big"), di.to_bytes(2, "little"))
