"""What one part of an event stream means: vendor formats to :class:`StreamEvent`, as tables.

Dahua ``text/plain`` parts: ``Code=VideoMotion;action=Start;index=0`` with an optional
``;data={json}`` (the JSON may itself hold ``;``), or ``Heartbeat``.

Hikvision ``EventNotificationAlert`` parts, XML (cameras, NVRs) or JSON (access
terminals): ``eventType``, ``eventState`` (active | inactive), ``channelID``,
``dateTime``, ``activePostCount`` (sometimes empty: ``<activePostCount/>`` must not
crash), and for access terminals an ``AccessControllerEvent`` object with
``majorEventType``, ``subEventType``, ``employeeNoString``, ``cardNo``, ``serialNo``.
``videoloss`` + ``inactive`` is what many Hikvision cameras send every few seconds when
nothing happens: proof of life, not an event.

Parsers raise :class:`BadPart` (with a kind for the counters) and nothing else; the
card numbers and plates they extract only ever go into readings, never into logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from drivers.event_stream.multipart import Part
from gateway import jsonsafe, xmlsafe
from gateway.accessevents import hikvision_access
from gateway.reading import FieldValue

MAX_TEXT = 256
"""Longest string kept in a field (a card number, a plate); longer is a bad part."""
MAX_JSON_DEPTH = 32
"""Deepest JSON accepted in a part (an event is 3 to 5 levels): deeper is bad_json, so
nothing downstream meets a value nested deep enough to exhaust the stack (the AcsEvent
answer has the same bound, client.MAX_JSON_DEPTH)."""


class BadPart(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class StreamEvent:
    code: str
    """The vendor's event type: VideoMotion, vmd, linedetection, AccessControllerEvent."""
    action: str
    """start | stop | pulse (an event without duration: a card swipe, a plate)."""
    channel: int | None = None
    """1-based (Dahua's 0-based ``index`` + 1, Hikvision's ``channelID``)."""
    time_ns: int | None = None
    """The device's own time, when it sent one."""
    serial: int | None = None
    """The device's event id (Hikvision serialNo): the de-duplication key."""
    fields: dict[str, FieldValue] = field(default_factory=dict)
    """Extra values from the event body (card, employee, plate...)."""
    utc_offset: int | None = None
    """Seconds east of UTC of the device's clock (from ``dateTime``): the AcsEvent
    search is asked in the device's own offset."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra tags (kind, result, reader, door)."""
    access: bool = False
    """An access-control event (stored in the access measurement, backfilled)."""
    shaped: bool = False
    """``tags`` and ``fields`` are already the access-event contract's (Hikvision
    terminals): stored as they are, with no ``event`` tag or ``action`` field."""


HEARTBEAT = StreamEvent("heartbeat", "pulse")


# -- values ----------------------------------------------------------------------------

def parse_json(data: bytes | str, what: str) -> Any:
    """Device JSON (a part, a Dahua ``data=``, an AcsEvent answer): anything unparsable,
    including nesting that exhausts the parser's stack, is ``BadPart("bad_json")``."""
    try:
        return jsonsafe.parse(data, max_depth=MAX_JSON_DEPTH)
    except jsonsafe.JsonRefused as exc:
        raise BadPart("bad_json", f"{what} is not JSON we accept: {exc}") from None


def _scalar(value: Any) -> str | int | float:
    """A value that may become a field: a list or object where a card number or a
    number belongs is a bad value, not its ``str()``."""
    if isinstance(value, str | int | float):
        return value
    raise BadPart("bad_value", f"{type(value).__name__} where a single value belongs")


def _text(value: Any) -> str:
    text = str(_scalar(value)).strip()
    if len(text) > MAX_TEXT:
        raise BadPart("bad_value", f"value longer than {MAX_TEXT} characters")
    return text


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise BadPart("bad_value", "a boolean where a number belongs")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        text = str(_scalar(value)).strip()
        if not text.lstrip("-").isdigit() or len(text) > 19:
            raise BadPart("bad_value", f"not an integer: {text[:20]!r}")
        number = int(text)
    if not -2**63 <= number < 2**63:
        raise BadPart("bad_value", "integer out of range")
    return number


def parse_device_time(value: str) -> tuple[int, int]:
    """ISO 8601 with an offset (``2026-11-28T17:05:03+08:00``): (ns since the epoch,
    the offset in seconds). Without an offset the device's local time is unknown:
    refused."""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadPart("bad_time", f"not an ISO time: {value[:40]!r}") from None
    if when.tzinfo is None:
        raise BadPart("bad_time", "device time without a UTC offset")
    offset = when.utcoffset()
    assert offset is not None
    return (int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000,
            int(offset.total_seconds()))


Extractor = Callable[[Any], FieldValue]

# field name in the reading -> (key in the vendor object, converter)
HIK_ACCESS_FIELDS: dict[str, tuple[str, Extractor]] = {
    "name_present": ("name", lambda v: bool(str(_scalar(v)).strip())),
    "verify_mode": ("currentVerifyMode", _text),
    "attendance": ("attendanceStatus", _text),
    "mask": ("mask", _text),
}
"""Details kept beside the access-event contract's own tags and fields. The person's
name is deliberately not stored (only whether the terminal knew one)."""
HIK_ACCESS_TAGS: dict[str, tuple[str, Extractor]] = {
    "reader": ("cardReaderNo", _int),
    "door": ("doorNo", _int),
}
"""Tags as the push driver writes them (docs/schema.md): a few values per terminal."""
CREDENTIAL_FIELD: dict[str, str] = {"card": "card", "face": "person"}
"""The contract's one identity field per ``kind`` (docs/schema.md): the card number for
a card, the employee number for a face. A terminal reports both; only the credential
gets the credential's name, or every card swipe would also count as a face."""
HIK_ANPR_FIELDS: dict[str, tuple[str, Extractor]] = {
    "plate": ("licensePlate", _text),
    "confidence": ("confidenceLevel", _int),
    "direction": ("direction", _text),
}
DAHUA_DATA_FIELDS: dict[str, dict[str, tuple[str, Extractor]]] = {
    "AccessControl": {"card": ("CardNo", _text), "employee": ("UserID", _text),
                      "method": ("Method", _int), "status": ("Status", _int)},
    "TrafficJunction": {"plate": ("TrafficCar.PlateNumber", _text)},
    "ANPR": {"plate": ("PlateNumber", _text)},
}
"""Values taken from a Dahua event's ``data`` JSON, per code (dotted paths)."""


def _take(source: Mapping[str, Any], table: Mapping[str, tuple[str, Extractor]]
          ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (path, convert) in table.items():
        value: Any = source
        for key in path.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is None or value == "":
            continue
        out[name] = convert(value)
    return out


# -- Dahua -----------------------------------------------------------------------------

DAHUA_ACTIONS = {"start": "start", "stop": "stop", "pulse": "pulse"}


def parse_dahua(part: Part) -> list[StreamEvent]:
    try:
        text = part.body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadPart("bad_encoding", "Dahua part is not UTF-8") from None
    if not text:
        raise BadPart("empty", "empty part")
    if text == "Heartbeat":
        return [HEARTBEAT]
    events = []
    # Several events in one part happen (older NVRs): one per line.
    for line in text.splitlines():
        line = line.strip()
        if line:
            events.append(_dahua_line(line))
    return events


def _dahua_line(line: str) -> StreamEvent:
    head, sep, data_text = line.partition(";data=")
    values: dict[str, str] = {}
    for item in head.split(";"):
        key, eq, value = item.partition("=")
        if not eq:
            raise BadPart("bad_event", f"not key=value: {item[:40]!r}")
        values[key.strip()] = value.strip()
    code = values.get("Code")
    action = DAHUA_ACTIONS.get(values.get("action", "").lower())
    if not code or action is None:
        raise BadPart("bad_event", "Code or action missing or unknown")
    _text(code)
    index = values.get("index")
    channel = _int(index) + 1 if index not in (None, "") else None
    fields: dict[str, FieldValue] = {}
    if sep:
        data = parse_json(data_text, "data=")
        if isinstance(data, dict):
            fields.update(_take(data, DAHUA_DATA_FIELDS.get(code, {})))
    return StreamEvent(code, action, channel, fields=fields,
                       access=code == "AccessControl")


# -- Hikvision -------------------------------------------------------------------------

HIK_STATES = {"active": "start", "inactive": "stop"}
KEEPALIVE = ("videoloss", "stop")


def parse_hikvision(part: Part) -> list[StreamEvent]:
    kind = part.content_type
    body = part.body.strip()
    if not body:
        raise BadPart("empty", "empty part")
    if kind.startswith("image/") or kind == "application/octet-stream":
        return []  # pictures: counted by the caller, never stored in the time-series
    if kind.endswith("json") or body[:1] in (b"{", b"["):
        return [_hik_event(_hik_json(body))]
    return [_hik_event(_hik_xml(body))]


def _hik_json(body: bytes) -> dict[str, Any]:
    doc = parse_json(body, "JSON part")
    if not isinstance(doc, dict):
        raise BadPart("bad_json", "JSON part is not an object")
    inner = doc.get("EventNotificationAlert")
    return inner if isinstance(inner, dict) else doc


def _hik_xml(body: bytes) -> dict[str, Any]:
    try:
        root = xmlsafe.parse(body)
    except xmlsafe.XmlRefused as exc:
        raise BadPart("bad_xml", str(exc)) from None
    if xmlsafe.local(root.tag) != "EventNotificationAlert":
        raise BadPart("bad_xml", f"root is {xmlsafe.local(root.tag)[:40]!r}")
    return _xml_dict(root)


def _xml_dict(element: xmlsafe.Element, depth: int = 0) -> dict[str, Any]:
    """Children as a dict (first of each name); leaves as stripped text (empty -> "")."""
    out: dict[str, Any] = {}
    for child in element:
        name = xmlsafe.local(child.tag)
        if name in out:
            continue
        if len(child) and depth < 4:
            out[name] = _xml_dict(child, depth + 1)
        else:
            out[name] = (child.text or "").strip()
    return out


def _hik_event(doc: Mapping[str, Any]) -> StreamEvent:
    code = doc.get("eventType")
    if not isinstance(code, str) or not code.strip():
        raise BadPart("bad_event", "eventType missing")
    code = _text(code)
    action = HIK_STATES.get(str(doc.get("eventState") or "active").strip().lower())
    if action is None:
        raise BadPart("bad_event", "eventState is neither active nor inactive")
    channel_raw = doc.get("channelID") or doc.get("dynChannelID")
    channel = _int(channel_raw) if channel_raw not in (None, "") else None
    when: tuple[int, int] | None = None
    if isinstance(doc.get("dateTime"), str) and doc["dateTime"].strip():
        when = parse_device_time(doc["dateTime"])
    # activePostCount: informative only, and sometimes empty; never required.
    access = doc.get("AccessControllerEvent")
    if isinstance(access, Mapping):
        return access_event(access, when)
    anpr = doc.get("ANPR")
    fields = _take(anpr, HIK_ANPR_FIELDS) if isinstance(anpr, Mapping) else {}
    return StreamEvent(code, "pulse" if fields else action, channel,
                       when[0] if when else None, fields=fields,
                       utc_offset=when[1] if when else None)


def access_event(record: Mapping[str, Any], when: tuple[int, int] | None) -> StreamEvent:
    """An access terminal's event, from the stream (``AccessControllerEvent``) or from
    the AcsEvent search (``InfoList`` entries: the same keys plus ``major``/``minor``/``time``),
    shaped as docs/schema.md's access-event contract, as the push driver shapes it: tags
    ``kind`` and ``result`` (from the major/minor event type, gateway/accessevents.py;
    absent where the code does not say), one credential field (``card`` for a card,
    ``person`` = the employee number for a face), the employee number of any other event
    as ``holder``, ``event_id`` (serialNo as text); the codes as ``major_event`` and
    ``sub_event``, and the details of :data:`HIK_ACCESS_FIELDS`."""
    source: dict[str, Any] = dict(record)
    if "majorEventType" not in source and "major" in source:
        source["majorEventType"] = source["major"]
    if "subEventType" not in source and "minor" in source:
        source["subEventType"] = source["minor"]
    if when is None and isinstance(source.get("time"), str):
        when = parse_device_time(source["time"])
    serial = _optional(source, "serialNo", _int)
    major = _optional(source, "majorEventType", _int)
    minor = _optional(source, "subEventType", _int)
    kind, result = hikvision_access(major or 0, minor or 0)
    card = _optional(source, "cardNo", _text)
    employee = _optional(source, "employeeNoString", _text) or \
        _optional(source, "employeeNo", _text)
    tags = {k: str(v) for k, v in _take(source, HIK_ACCESS_TAGS).items()}
    tags.update({k: v for k, v in (("kind", kind), ("result", result)) if v})
    fields: dict[str, FieldValue] = _take(source, HIK_ACCESS_FIELDS)
    credential = {"card": card, "face": employee}.get(kind)
    if credential is not None:
        fields[CREDENTIAL_FIELD[kind]] = credential
    if employee is not None and kind != "face":
        fields["holder"] = employee
    if major is not None:
        fields["major_event"] = major
    if minor is not None:
        fields["sub_event"] = minor
    if serial is not None:
        fields["event_id"] = str(serial)
    return StreamEvent("AccessControllerEvent", "pulse", None,
                       time_ns=when[0] if when else None, serial=serial,
                       fields=fields, tags=tags,
                       utc_offset=when[1] if when else None, access=True, shaped=True)


def _optional(source: Mapping[str, Any], key: str, convert: Callable[[Any], Any]) -> Any:
    """``convert(source[key])``; None when the key is absent or empty."""
    value = source.get(key)
    if value is None or value == "":
        return None
    converted = convert(value)
    return None if converted == "" else converted


PARSERS: dict[str, Callable[[Part], list[StreamEvent]]] = {
    "dahua": parse_dahua,
    "hikvision": parse_hikvision,
}
