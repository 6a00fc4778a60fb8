"""Modbus points: where a value lives, how its registers decode, and how to encode a write.

Decoding is table driven: a type maps to (register count, struct format) and a byte/word
order maps to (swap words, swap bytes); adding a type is one table row, not a branch.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from gateway.config.types import StrictModel

Table = Literal["coil", "discrete", "holding", "input"]
PointType = Literal["bool", "bit", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                    "float32", "float64", "string"]
Order = Literal["ABCD", "BADC", "CDAB", "DCBA"]

BIT_TABLES = frozenset({"coil", "discrete"})
WRITABLE_TABLES = frozenset({"coil", "holding"})

NUMERIC_FORMATS: dict[str, tuple[int, str]] = {
    # type: (registers, struct format of the big-endian byte string ABCD...)
    "int16": (1, ">h"), "uint16": (1, ">H"),
    "int32": (2, ">i"), "uint32": (2, ">I"),
    "int64": (4, ">q"), "uint64": (4, ">Q"),
    "float32": (2, ">f"), "float64": (4, ">d"),
}
FLOAT_TYPES = frozenset({"float32", "float64"})

ORDERS: dict[str, tuple[bool, bool]] = {
    # order: (reverse register order, swap the two bytes of each register)
    "ABCD": (False, False),  # big-endian: the Modbus default
    "BADC": (False, True),   # byte-swapped registers
    "CDAB": (True, False),   # word-swapped: low register first (most meters)
    "DCBA": (True, True),    # little-endian
}


def parse_address(value: Any) -> int:
    """Register addresses as installers copy them from manuals: 16, "16", "0x0010"."""
    if isinstance(value, bool):
        raise ValueError("expected a register address like 16 or 0x0010")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
        except ValueError:
            raise ValueError(f"expected a register address like 16 or 0x0010, got {value!r}"
                             ) from None
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"address must be 0..65535 (0x0000..0xFFFF), got {value!r}")
    return value


Address = Annotated[int, BeforeValidator(parse_address), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0, "maximum": 65535},
              {"type": "string", "pattern": r"^\s*(0[xX][0-9a-fA-F_]{1,6}|\d+)\s*$"}],
    "description": "0-based protocol address (register 40001 in a manual is holding 0)",
})]

FIELD_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Point(StrictModel):
    """One value of a device: a coil, a discrete input, or one or more registers."""

    name: str = Field(pattern=FIELD_NAME, max_length=64, description="the field name")
    table: Table = "holding"
    address: Address
    type: PointType | None = Field(
        default=None, description="default: bool for coil/discrete, uint16 for registers")
    bit: int | None = Field(default=None, ge=0, le=15, description="bit index for type bit")
    length: int | None = Field(
        default=None, ge=1, le=125, description="registers of a string (2 characters each)")
    order: Order = Field(default="ABCD", description="byte/word order of multi-byte values")
    scale: float = 1.0
    offset: float = 0.0
    precision: int | None = Field(default=None, ge=0, le=12, description="decimals kept")
    unit: str | None = None
    on_change: bool = Field(
        default=False, description="report only when the value changed (beyond deadband)")
    deadband: float = Field(default=0.0, ge=0, le=1e12)
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Point:
        kind = self.type or ("bool" if self.table in BIT_TABLES else "uint16")
        object.__setattr__(self, "type", kind)
        if self.table in BIT_TABLES and kind != "bool":
            raise ValueError(f"a {self.table} is a single bit: type must be bool, not {kind}")
        if kind == "bit" and self.bit is None:
            raise ValueError("type bit needs bit: 0..15")
        if kind != "bit" and self.bit is not None:
            raise ValueError("bit is only for type bit")
        if kind == "string" and self.length is None:
            raise ValueError("type string needs length (registers)")
        if kind != "string" and self.length is not None:
            raise ValueError("length is only for type string")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + self.count > 0x10000:
            raise ValueError(f"point runs past the end of the address space "
                             f"({self.address} + {self.count} registers)")
        return self

    @property
    def kind(self) -> str:
        return self.type or "uint16"

    @property
    def count(self) -> int:
        """Registers (or bits) this point occupies."""
        kind = self.kind
        if kind == "string":
            return self.length or 1
        return NUMERIC_FORMATS.get(kind, (1, ""))[0]

    @property
    def end(self) -> int:
        """One past the last register (or bit)."""
        return self.address + self.count

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def writable(self) -> bool:
        return self.table in WRITABLE_TABLES and self.kind != "bit"

    def decode(self, words: Sequence[int] | Sequence[bool]) -> Any:
        """Value of this point from exactly ``count`` registers (or one bit)."""
        return _DECODERS[self.kind](self, words)

    def encode(self, value: Any) -> list[int] | list[bool]:
        """Registers (or one bit) to write for ``value`` (inverse of decode)."""
        return _ENCODERS[self.kind](self, value)


def _to_bytes(words: Sequence[int], order: str) -> bytes:
    reverse, swap = ORDERS[order]
    seq = list(reversed(words)) if reverse else list(words)
    raw = b"".join(int(w).to_bytes(2, "big") for w in seq)
    if swap:
        raw = bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))
    return raw


def _from_bytes(raw: bytes, order: str) -> list[int]:
    reverse, swap = ORDERS[order]
    if swap:
        raw = bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return list(reversed(words)) if reverse else words


def _scaled(point: Point, raw: float | int) -> Any:
    if isinstance(raw, float) and not math.isfinite(raw):
        return raw
    if point.scale == 1 and point.offset == 0 and point.precision is None:
        return raw
    value = raw * point.scale + point.offset
    if point.precision is not None:
        value = round(value, point.precision)
    return float(value)


def _unscaled(point: Point, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{point.name}: expected a number, got {value!r}")
    return (value - point.offset) / point.scale


def _numeric_codec(kind: str, order: str) -> tuple[Any, Any, bool]:
    """(pack registers, unpack value, reverse registers first) for one type and order.

    Packing the registers little-endian swaps the two bytes of each, so every order is
    one ``struct`` pack and one unpack: no per-register loop on the poll path."""
    count, fmt = NUMERIC_FORMATS[kind]
    reverse, swap = ORDERS[order]
    pack = struct.Struct(f"{'<' if swap else '>'}{count}H").pack
    return pack, struct.Struct(fmt).unpack, reverse


_NUMERIC_CODECS = {(kind, order): _numeric_codec(kind, order)
                   for kind in NUMERIC_FORMATS for order in ORDERS}


def _decode_numeric(point: Point, words: Sequence[int]) -> Any:
    pack, unpack, reverse = _NUMERIC_CODECS[point.kind, point.order]
    (raw,) = unpack(pack(*(words[::-1] if reverse else words)))
    return _scaled(point, raw)


def _encode_numeric(point: Point, value: Any) -> list[int]:
    _, fmt = NUMERIC_FORMATS[point.kind]
    exact = isinstance(value, int) and not isinstance(value, bool)
    # Integers unscaled stay integers: 64-bit counters do not survive a float round trip.
    raw: float | int = value if exact and point.scale == 1 and point.offset == 0 else (
        _unscaled(point, value))
    if point.kind not in FLOAT_TYPES:
        if abs(raw - round(raw)) > 1e-9 * max(1.0, abs(raw)):
            raise ValueError(f"{point.name}: {value!r} is not representable as {point.kind} "
                             f"with scale {point.scale}")
        raw = round(raw)
    try:
        packed = struct.pack(fmt, raw)
    except struct.error:
        raise ValueError(f"{point.name}: {value!r} is out of range for {point.kind}") from None
    return _from_bytes(packed, point.order)


def _decode_bool(point: Point, words: Sequence[Any]) -> bool:
    return bool(words[0])


def _encode_bool(point: Point, value: Any) -> list[Any]:
    flag = _as_bool(point, value)
    return [flag] if point.is_bits else [int(flag)]


def _as_bool(point: Point, value: Any) -> bool:
    table: dict[Any, bool] = {True: True, False: False, "1": True, "0": False,
                              "true": True, "false": False, "on": True, "off": False}
    key = value.strip().lower() if isinstance(value, str) else value
    if not isinstance(key, str | bool) and key in (0, 1):
        key = bool(key)  # 0/1 and 0.0/1.0
    if key not in table:
        raise ValueError(f"{point.name}: expected true/false, got {value!r}")
    return table[key]


def _decode_bit(point: Point, words: Sequence[int]) -> bool:
    return bool((int(words[0]) >> (point.bit or 0)) & 1)


def _encode_bit(point: Point, value: Any) -> list[int]:
    raise ValueError(f"{point.name}: a single bit of a register cannot be written safely "
                     "(read-modify-write would race the device); write the whole register")


def _decode_string(point: Point, words: Sequence[int]) -> str:
    raw = _to_bytes(words, point.order if point.order in ("ABCD", "BADC") else "ABCD")
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()


def _encode_string(point: Point, value: Any) -> list[int]:
    raw = str(value).encode("latin-1")
    size = 2 * point.count
    if len(raw) > size:
        raise ValueError(f"{point.name}: string longer than {size} bytes")
    order = point.order if point.order in ("ABCD", "BADC") else "ABCD"
    return _from_bytes(raw.ljust(size, b"\x00"), order)


PointReader = Callable[[Sequence[int] | Sequence[bool]], Any]


def reader(point: Point) -> PointReader:
    """``point.decode`` compiled for the poll path: the same value from the same words,
    with the type, order and scaling looked up once instead of on every read (a numeric
    point without scaling is one ``struct`` pack and unpack). The driver builds one per
    point of its plan; tests/test_modbus_points.py checks it against ``decode``."""
    kind = point.kind
    if kind not in NUMERIC_FORMATS:
        decode = _DECODERS[kind]
        return lambda words: decode(point, words)
    pack, unpack, reverse = _NUMERIC_CODECS[kind, point.order]
    if point.scale == 1 and point.offset == 0 and point.precision is None:
        if reverse:
            return lambda words: unpack(pack(*words[::-1]))[0]
        return lambda words: unpack(pack(*words))[0]
    if reverse:
        return lambda words: _scaled(point, unpack(pack(*words[::-1]))[0])
    return lambda words: _scaled(point, unpack(pack(*words))[0])


_DECODERS: dict[str, Any] = {
    **dict.fromkeys(NUMERIC_FORMATS, _decode_numeric),
    "bool": _decode_bool, "bit": _decode_bit, "string": _decode_string,
}
_ENCODERS: dict[str, Any] = {
    **dict.fromkeys(NUMERIC_FORMATS, _encode_numeric),
    "bool": _encode_bool, "bit": _encode_bit, "string": _encode_string,
}


def changed(point: Point, old: Any, new: Any) -> bool:
    """Whether an on-change point should be reported (beyond its deadband)."""
    if old is None:
        return True
    if isinstance(new, int | float) and isinstance(old, int | float) and point.deadband:
        return abs(new - old) > point.deadband
    return bool(new != old)
