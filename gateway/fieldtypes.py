"""A mapped field's declared type, and the conversion of a payload value to it.

Shared by the drivers that map payloads to fields by configuration (the mqtt driver's
``fields: {x: {path, type}}``, the camera_push ``generic-json`` mapping), so a ``type:``
means the same everywhere; here in the core so neither driver imports the other.

Why types at all: a store keeps one type per field name (InfluxDB refuses a point whose
field has another type than the first one it stored, for the life of the shard), so a
sensor posting ``20``, then ``20.5``, then ``"n/a"`` must not become ``20i``, ``20.5`` and
``"n/a"``. A converter either returns a value of its type or raises ``ValueError`` (also
``TypeError`` / ``OverflowError`` from the conversions), and the caller refuses that one
value: it is never stored as another type, nor silently changed (``20.5`` is no ``int``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Literal

from gateway.reading import FieldValue

INT64 = 2**63

FieldType = Literal["auto", "float", "int", "bool", "str"]
"""``auto``: as the payload has it (int, float, bool, text; a list of scalars as text)."""


def auto(value: Any) -> FieldValue:
    """The value as it came, if a store can take it."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError("not finite")
        return value
    if kind is int:
        if not -INT64 <= value < INT64:
            raise ValueError("out of int64 range")
        return value
    if kind is bool or kind is str:
        return value
    if kind is list and all(type(v) in (str, int, float, bool) for v in value):
        return ",".join(str(v) for v in value)
    raise ValueError(f"cannot store a {kind.__name__}")


def to_float(value: Any) -> float:
    """Numbers, booleans (0/1) and numeric text; never NaN or an infinity."""
    if type(value) is bool:
        return float(value)
    if type(value) not in (int, float, str):
        raise ValueError(f"not a number: a {type(value).__name__}")
    number = float(value)  # ValueError for text that is no number, OverflowError for 1e999 ints
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def to_int(value: Any) -> int:
    """Integers, booleans (0/1), whole floats (``20.0``) and integer text; ``20.5`` is
    refused rather than truncated (a stored 20 would be a wrong value, not a missing one)."""
    if type(value) is bool or type(value) is int:
        number = int(value)
    elif type(value) is float:
        if not value.is_integer():  # also NaN and the infinities
            raise ValueError(f"not a whole number: {value!r}")
        number = int(value)
    elif type(value) is str:
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            return to_int(float(text))  # "20.0"; "20.5" and "n/a" raise
    else:
        raise ValueError(f"not an integer: a {type(value).__name__}")
    if not -INT64 <= number < INT64:
        raise ValueError("out of int64 range")
    return number


_BOOL_WORDS = {"true": True, "false": False, "on": True, "off": False, "1": True, "0": False,
               "yes": True, "no": False, "open": True, "closed": False}


def to_bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    if type(value) in (int, float):
        return value != 0
    if type(value) is str and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueError(f"not a boolean: {value!r:.30}")


def to_str(value: Any) -> str:
    """Text as it is; anything else as its compact JSON (``20`` -> ``"20"``)."""
    return value if type(value) is str else json.dumps(value, separators=(",", ":"))


CONVERTERS: dict[str, Callable[[Any], FieldValue]] = {
    "auto": auto, "float": to_float, "int": to_int, "bool": to_bool, "str": to_str,
}
