"""``generic-json``: any device that posts a JSON object, mapped by JSON paths.

The MQTT driver's mapping (drivers/mqtt/mapping.py) is richer, but importing any module
of drivers.mqtt runs its package, which registers the mqtt driver and imports paho; so
this is a small mapping of its own: paths ``$.a.b[0]``, an optional event time and
event id, and each field's ``type`` converted by the core's converters
(gateway/fieldtypes.py, the ones the mqtt driver's ``type:`` uses).

A store keeps one type per field name: InfluxDB refuses every later point of a field
that arrives as another type than the first one it stored. So a field never changes
type here: without a ``type``, a JSON number is always a float (``20`` and ``20.5`` are
one type), a boolean a bool, text text; with one, a value that does not fit it is
refused. A refused value (``wrong_type``, ``invalid_text``), a refused tag
(``invalid_tag``), an unusable time (``bad_time``: the arrival time is used) or event id
(``invalid_event_id``: retries are not recognised) is dropped from the event and
reported in ``Parsed.dropped``; the receiver counts and logs each kind once. A post left
with no field is refused (400) with the first value's reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from drivers.camera_push.config import GENERIC_TYPES, GenericMapping
from drivers.camera_push.payload import Answer, Parsed, Refused, malformed
from drivers.camera_push.payload import media_type as _media_type
from drivers.camera_push.values import epoch_ns, json_kind, parse_json, text_value
from gateway.fieldtypes import CONVERTERS, to_float
from gateway.jsonpath import MISSING, compile_path
from gateway.jsonpath import resolve as _resolve
from gateway.reading import FieldValue, Reading

JSON_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})
CONVERT_ERRORS = (ValueError, TypeError, OverflowError)


def resolve(document: object, steps: tuple[str | int, ...]) -> object:
    """The value at ``steps``; None when absent (a mapped field may simply be missing)."""
    value = _resolve(document, steps)
    return None if value is MISSING else value


def _untyped(value: Any) -> FieldValue:
    """No ``type`` in the mapping: numbers as float, booleans and text as they are."""
    if type(value) is bool:
        return value
    if type(value) is int or type(value) is float:
        return to_float(value)
    if type(value) is str:
        return value
    raise ValueError(f"cannot store {json_kind(value)}")


class _Field:
    def __init__(self, name: str, path: str, kind: str | None) -> None:
        self.name = name
        self.steps = compile_path(path)
        self.kind = GENERIC_TYPES[kind] if kind else "float, bool or text"
        self.convert: Callable[[Any], FieldValue] = (CONVERTERS[GENERIC_TYPES[kind]] if kind
                                                     else _untyped)

    def value(self, raw: Any) -> FieldValue:
        """The stored value, or Refused (``wrong_type`` / ``invalid_text``) for this value
        alone. The detail never quotes the value (it may be personal)."""
        try:
            value = self.convert(raw)
        except CONVERT_ERRORS:
            raise malformed("wrong_type", f"field {self.name!r}: {json_kind(raw)} does not "
                            f"fit type {self.kind}") from None
        if type(value) is str:
            try:
                value = text_value(value)
            except ValueError as exc:
                raise malformed("invalid_text", f"field {self.name!r}: {exc}") from None
        return value


class GenericJson:
    opens_gate = False

    def __init__(self, mapping: GenericMapping) -> None:
        self.mapping = mapping
        self.fields = [_Field(k, spec.path, spec.type) for k, spec in mapping.fields.items()]
        self.tags = {k: compile_path(p) for k, p in mapping.payload_tags.items()}
        self.time = compile_path(mapping.time) if mapping.time else None
        self.event_id = compile_path(mapping.event_id) if mapping.event_id else None

    def parse(self, content_type: str, body: bytes, arrival_ns: int) -> Parsed:
        if _media_type(content_type) not in JSON_TYPES:
            raise Refused(415, "unsupported_media_type", f"{content_type[:60]!r}: expected JSON")
        document = parse_json(body)
        dropped: list[Refused] = []
        fields: dict[str, FieldValue] = {}
        for field in self.fields:
            raw = resolve(document, field.steps)
            if raw is None:
                continue
            try:
                fields[field.name] = field.value(raw)
            except Refused as exc:
                dropped.append(exc)
        if not fields:
            if dropped:
                raise dropped[0]
            raise malformed("no_fields", "none of the mapped fields is present")
        tags: dict[str, str] = {}
        for name, steps in self.tags.items():
            raw = resolve(document, steps)
            if raw is None:
                continue
            try:
                tags[name] = text_value(raw)
            except ValueError as exc:
                dropped.append(malformed("invalid_tag", f"tag {name!r}: {exc}"))
        time_ns = arrival_ns
        if self.time is not None and (raw := resolve(document, self.time)) is not None:
            stamp = epoch_ns(raw, self.mapping.time_format)
            if stamp is None:
                dropped.append(malformed("bad_time", f"time: {json_kind(raw)} that is no "
                                         f"{self.mapping.time_format} time; the arrival "
                                         "time is used"))
            else:
                time_ns = stamp
        key = None
        if self.event_id is not None and (raw := resolve(document, self.event_id)) is not None:
            try:
                key = text_value(raw)
            except ValueError as exc:
                dropped.append(malformed("invalid_event_id", f"event_id: {exc}; a retry of "
                                         "this post is stored again"))
        reading = Reading(self.mapping.measurement, tags, fields, time_ns)
        return Parsed(reading, key=key, dropped=dropped)

    def answer(self, parsed: Parsed, opens: bool) -> Answer:
        return Answer(200, json.dumps({"ok": True}).encode())
