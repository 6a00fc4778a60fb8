"""Payload -> Reading, by a device's mapping. Pure and synchronous: easy to fuzz.

Anything wrong raises :class:`Rejected` with a short machine reason (counted per device
and sent to the ops bus dead-letter topic). A field with a wrong type is dropped and
counted, not the whole message, unless the mapping marks it ``required``.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from drivers.mqtt.config import MqttDeviceConfig, ValueSpec
from drivers.mqtt.topics import TopicPattern
from gateway import jsonsafe
from gateway.fieldtypes import CONVERTERS, INT64
from gateway.fieldtypes import auto as _auto
from gateway.jsonpath import MISSING, compile_path, resolve
from gateway.reading import FieldValue, Reading

_KV_PAIR = re.compile(r"([A-Za-z_][\w.-]*)\s*[=:]\s*(\"[^\"]*\"|[^\s,;&]*)")


class Rejected(Exception):
    """A message the mapping cannot turn into a reading; ``reason`` is a counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Filtered(Exception):
    """The message is fine but ``match`` says it is not for this device."""


# -- payload formats -------------------------------------------------------------------

def _text(payload: bytes | bytearray) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not_utf8") from None


def _json(payload: bytes | bytearray) -> Any:
    try:
        return jsonsafe.parse(payload)  # RecursionError (deep nesting) included
    except jsonsafe.JsonRefused as exc:
        raise Rejected("invalid_json", str(exc)[:80]) from None


def _number(payload: bytes | bytearray) -> Any:
    text = _text(payload).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise Rejected("not_a_number", repr(text[:40])) from None


def _scalar(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _kv(payload: bytes | bytearray) -> Any:
    pairs = _KV_PAIR.findall(_text(payload))
    if not pairs:
        raise Rejected("invalid_kv", "no key=value pairs")
    return {key: _scalar(value) for key, value in pairs}


PARSERS: dict[str, Callable[[bytes | bytearray], Any]] = {
    "json": _json, "number": _number, "kv": _kv, "text": lambda p: _text(p).strip(),
}


# -- values ----------------------------------------------------------------------------

def _b64(value: Any) -> str:
    if type(value) is not str:
        raise ValueError("base64 value is not a string")
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"bad base64: {exc}") from None


class ValueGetter:
    def __init__(self, spec: ValueSpec) -> None:
        paths = [spec.path] if isinstance(spec.path, str) else spec.path
        self.paths = [compile_path(p) for p in paths]
        self.convert = CONVERTERS[spec.type]
        self.base64 = spec.base64
        self.required = spec.required
        self.scale = spec.scale

    def get(self, document: Any) -> Any:
        """The converted value, MISSING, or ValueError for a present but unusable one."""
        for steps in self.paths:
            value = resolve(document, steps)
            if value is not MISSING and value is not None:
                break
        else:
            return MISSING
        if self.base64:
            value = _b64(value)
        value = self.convert(value)
        if type(value) is str and not value.isascii():
            # JSON may carry lone surrogates ("\ud800"): valid JSON, not valid text, and
            # no store can take them. Raises UnicodeEncodeError, counted as invalid_text.
            value.encode("utf-8")
        if self.scale is not None and type(value) in (int, float):
            value = _auto(value * self.scale)
        return value


# -- time ------------------------------------------------------------------------------

def _epoch_auto(number: float) -> int:
    """Seconds, ms, us or ns told apart by magnitude (valid for years 1973..2286)."""
    magnitude = abs(number)
    scale = 10**9 if magnitude < 1e11 else 10**6 if magnitude < 1e14 else 10**3 \
        if magnitude < 1e17 else 1
    return _scaled(number, scale)


def _scaled(number: float, scale: int) -> int:
    """Exact for integers (ms -> ns must not pick up float rounding)."""
    return number * scale if type(number) is int else round(number * scale)


def _iso(text: str) -> int:
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # documented: naive ISO times are UTC
    return int(moment.timestamp() * 1e6) * 1000


EPOCH_SCALE = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def parse_time(value: Any, time_format: str) -> int:
    """ns since the epoch; ValueError when unusable (the caller falls back to arrival)."""
    if type(value) is bool:
        raise ValueError("boolean time")
    if type(value) is str:
        text = value.strip()
        try:
            value = float(text) if "." in text else int(text)
        except ValueError:
            if time_format not in ("auto", "iso8601"):
                raise
            ns = _iso(text)
            if not 0 < ns < INT64:  # "0001-01-01T00:00:00Z", "9999-12-31...": no store takes it
                raise ValueError("time out of range") from None
            return ns
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"unusable time {value!r:.30}")
    if time_format == "iso8601":
        raise ValueError("expected an ISO 8601 string")
    ns = _epoch_auto(value) if time_format == "auto" else _scaled(value, EPOCH_SCALE[time_format])
    if not 0 < ns < INT64:
        raise ValueError("time out of range")
    return ns


# -- the mapper ------------------------------------------------------------------------

class Mapper:
    """One device's compiled mapping."""

    def __init__(self, config: MqttDeviceConfig) -> None:
        self.config = config
        self.patterns = [TopicPattern.parse(t) for t in config.topics()]
        self.parse = PARSERS[config.format]
        # Without a mapping, a number or text payload is the field "value"; a kv payload
        # stores every pair as a field (it used to map the whole dict to "value", which no
        # store takes, so every kv message was dead-lettered; found by an outside probe).
        self.all_pairs = config.format == "kv" and not config.fields
        # A bare number is stored as a float: "20" then "20.5" from the same sensor made
        # an integer field and then a float one, which InfluxDB refuses (a field keeps
        # its first type); give the field a type in `fields` for anything else.
        default: dict[str, ValueSpec] = {
            "json": {}, "kv": {}, "number": {"value": ValueSpec(path="$", type="float")},
        }.get(config.format, {"value": ValueSpec(path="$")})
        self.fields = {k: ValueGetter(s) for k, s in (config.fields or default).items()}
        self.tags = {k: ValueGetter(s) for k, s in config.payload_tags.items()}
        times = [] if config.time is None else (
            [config.time] if isinstance(config.time, str) else config.time)
        self.time_paths = [compile_path(p) for p in times]
        self.match = [(compile_path(p), list(values)) for p, values in config.match.items()]
        self.problems: dict[str, int] = {}

    def topic_tags(self, topic: str) -> dict[str, str] | None:
        for pattern in self.patterns:
            tags = pattern.match(topic)
            if tags is not None:
                return tags
        return None

    def _count(self, reason: str) -> None:
        self.problems[reason] = self.problems.get(reason, 0) + 1

    def decode(self, topic_tags: dict[str, str], payload: bytes | bytearray,
               arrival_ns: int) -> Reading:
        if len(payload) > self.config.max_payload:
            raise Rejected("payload_too_large", f"{len(payload)} bytes")
        document = self.parse(payload)
        for steps, allowed in self.match:
            if resolve(document, steps) not in allowed:
                raise Filtered
        fields: dict[str, FieldValue] = {}
        if self.all_pairs:
            for name, value in document.items():
                try:
                    fields[name] = _auto(value)
                except ValueError:
                    self._count("wrong_type")
        for name, getter in self.fields.items():
            value = self._value(name, getter, document)
            if value is not MISSING:
                fields[name] = value
        if not fields:
            raise Rejected("no_fields", "none of the mapped fields is present and valid")
        tags = dict(topic_tags)
        for name, getter in self.tags.items():
            value = self._value(name, getter, document)
            if value is not MISSING and value != "":
                tags[name] = value if type(value) is str else str(value)
        return Reading(self.config.measurement, tags, fields, self._time(document, arrival_ns))

    def _value(self, name: str, getter: ValueGetter, document: Any) -> Any:
        try:
            value = getter.get(document)
        except (ValueError, TypeError, OverflowError) as exc:
            reason = "invalid_text" if isinstance(exc, UnicodeError) else "wrong_type"
            if getter.required:
                raise Rejected(reason, f"{name}: {exc}") from None
            self._count(reason)
            return MISSING
        if value is MISSING and getter.required:
            raise Rejected("missing_path", name)
        return value

    def _time(self, document: Any, arrival_ns: int) -> int:
        for steps in self.time_paths:
            value = resolve(document, steps)
            if value is MISSING or value is None:
                continue
            try:
                return parse_time(value, self.config.time_format)
            except (ValueError, TypeError, OverflowError):
                self._count("bad_time")
                return arrival_ns
        return arrival_ns
