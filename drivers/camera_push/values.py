"""Loose values from devices made strict: numbers that arrive as text, times, JSON.

Devices send ``"98"`` where a number is meant and ``""`` where nothing is (an empty
``<activePostCount/>`` once crashed a popular parser). Everything here returns None for
a value that is absent or unusable, and profiles decide whether that refuses the post.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from drivers.camera_push.payload import malformed
from gateway import jsonsafe
from gateway.fieldtypes import INT64

MAX_TEXT = 256
"""Longest text value stored (a plate, a card number, an event type)."""



def parse_json(body: bytes) -> Any:
    try:
        return jsonsafe.parse(body)  # deep nesting and bad UTF-8 included
    except jsonsafe.JsonRefused as exc:
        raise malformed("invalid_json", str(exc)[:80]) from None


def as_int(value: Any) -> int | None:
    if type(value) is int:
        return value if -INT64 <= value < INT64 else None
    if type(value) is float and math.isfinite(value) and value.is_integer():
        return as_int(int(value))
    if type(value) is str and re.fullmatch(r"\s*-?\d{1,19}\s*", value):
        return as_int(int(value))
    return None


def as_float(value: Any) -> float | None:
    if type(value) in (int, float):
        number = float(value)
    elif type(value) is str:
        try:
            number = float(value.strip()) if len(value) <= 40 else math.nan
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def as_text(value: Any) -> str | None:
    """A short, storable string; None for anything else (lists, objects, surrogates)."""
    try:
        return text_value(value)
    except ValueError:
        return None


def text_value(value: Any) -> str:
    """A short, storable string (numbers as their text), or ValueError saying what is
    wrong with it, without quoting it (it may be a plate or a card number)."""
    if type(value) is int or type(value) is float:
        value = str(value)
    if type(value) is not str:
        raise ValueError(f"not text or a number but {json_kind(value)}")
    text = value.strip()
    if not text:
        raise ValueError("empty")
    if len(text) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from JSON "\ud800"
        raise ValueError("not UTF-8 (a lone surrogate)") from None
    return text


def json_kind(value: Any) -> str:
    """What a decoded JSON value is, in JSON's words (for messages that must not quote it)."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def iso_ns(value: Any) -> int | None:
    """ISO 8601 (``2024-05-06T10:11:12+08:00``) -> ns; naive times are taken as UTC."""
    text = as_text(value)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        ns = int(moment.timestamp()) * 10**9 + moment.microsecond * 1000
    except (OverflowError, OSError, ValueError):
        return None
    return ns if 0 < ns < INT64 else None


EPOCH_SCALE = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def epoch_ns(value: Any, unit: str) -> int | None:
    if unit == "iso8601":
        return iso_ns(value)
    number: int | float | None = as_int(value)
    if number is None:
        number = as_float(value)
    if number is None:
        return None
    ns = number * EPOCH_SCALE[unit] if type(number) is int else round(number * EPOCH_SCALE[unit])
    return ns if 0 < ns < INT64 else None

