"""``generic-json``: any device that posts a JSON object, mapped by JSON paths.

The MQTT driver's mapping (drivers/mqtt/mapping.py) is richer, but importing any module
of drivers.mqtt runs its package, which registers the mqtt driver and imports paho; so
this is a small mapping of its own: paths ``$.a.b[0]``, values stored as they come
(numbers, booleans, short text), an optional event time and event id.
"""

from __future__ import annotations

import json

from drivers.camera_push.config import GenericMapping
from drivers.camera_push.payload import Answer, Parsed, Refused, malformed
from drivers.camera_push.payload import media_type as _media_type
from drivers.camera_push.values import (
    INT64,
    as_text,
    epoch_ns,
    parse_json,
)
from gateway.jsonpath import MISSING, compile_path
from gateway.jsonpath import resolve as _resolve
from gateway.reading import FieldValue, Reading

JSON_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})


def resolve(document: object, steps: tuple[str | int, ...]) -> object:
    """The value at ``steps``; None when absent (a mapped field may simply be missing)."""
    value = _resolve(document, steps)
    return None if value is MISSING else value


def _value(value: object) -> FieldValue | None:
    if type(value) is bool:
        return value
    if type(value) is int:
        return value if -INT64 <= value < INT64 else None
    if type(value) is float:
        return value if value == value and abs(value) != float("inf") else None
    return as_text(value)


class GenericJson:
    opens_gate = False

    def __init__(self, mapping: GenericMapping) -> None:
        self.mapping = mapping
        self.fields = {k: compile_path(p) for k, p in mapping.fields.items()}
        self.tags = {k: compile_path(p) for k, p in mapping.payload_tags.items()}
        self.time = compile_path(mapping.time) if mapping.time else None
        self.event_id = compile_path(mapping.event_id) if mapping.event_id else None

    def parse(self, content_type: str, body: bytes, arrival_ns: int) -> Parsed:
        if _media_type(content_type) not in JSON_TYPES:
            raise Refused(415, "unsupported_media_type", f"{content_type[:60]!r}: expected JSON")
        document = parse_json(body)
        fields: dict[str, FieldValue] = {}
        for name, steps in self.fields.items():
            value = _value(resolve(document, steps))
            if value is not None:
                fields[name] = value
        if not fields:
            raise malformed("no_fields", "none of the mapped fields is present and usable")
        tags = {k: t for k, steps in self.tags.items()
                if (t := as_text(resolve(document, steps))) is not None}
        time_ns = arrival_ns
        if self.time is not None:
            time_ns = epoch_ns(resolve(document, self.time), self.mapping.time_format) \
                or arrival_ns
        key = None
        if self.event_id is not None:
            raw = resolve(document, self.event_id)
            key = as_text(raw) if type(raw) is not dict and type(raw) is not list else None
        reading = Reading(self.mapping.measurement, tags, fields, time_ns)
        return Parsed(reading, key=key)

    def answer(self, parsed: Parsed, opens: bool) -> Answer:
        return Answer(200, json.dumps({"ok": True}).encode())
