"""Hikvision ISAPI push ("listening host"): ``EventNotificationAlert`` as XML, JSON or
``multipart/form-data``. XML goes through gateway/xmlsafe.py (defusedxml).

* ANPR cameras post three parts: ``anpr.xml`` plus ``licensePlatePicture.jpg`` and
  ``detectionPicture.jpg`` -> ``vehicle_event`` (plate, confidence, plate_color_name,
  direction_name, vehicle_type); the dedup key is the alert's UUID, else its
  time+channel+plate.
* Access terminals post ``AccessControllerEvent`` (JSON, or a JSON part beside a face
  picture) -> ``access_event`` as docs/schema.md's contract has it: tags ``kind`` and
  ``result`` (from the major/minor event type), reader, door; the credential as
  ``card`` (card events) or ``person`` (face events: the employee number), the employee
  number of other events as ``holder``; ``event_id`` (serialNo, text), major_event,
  sub_event, serial, verify_mode. ``serialNo`` is the dedup key. The person's name is
  never stored; a card number is stored on card events only (one identity per event).
* ``heartBeat`` is proof of life; any other ``eventType`` -> ``camera_event``
  (event_type, event_state, active_post_count; tag channel).
* A multipart body with several event parts (devices send one) gives one event per part,
  each with its own dedup key (``Parsed.more``); the pictures go with the first.

``dateTime`` has whole seconds, and a store keeps one point per series and time: two
card swipes in one second at one terminal would overwrite each other. So an event's
time is its ``dateTime`` plus ``serialNo mod 1000`` milliseconds: deterministic (a
retried post lands on the same point) and distinct for consecutive serial numbers.
"""

from __future__ import annotations

import re
from typing import Any

from drivers.camera_push import multipart
from drivers.camera_push.payload import Answer, Image, Parsed, Refused, clean_fields, malformed
from drivers.camera_push.payload import media_type as _media_type
from drivers.camera_push.values import as_float, as_int, as_text, iso_ns, parse_json
from gateway import xmlsafe
from gateway.accessevents import hikvision_access
from gateway.reading import FieldValue, Reading

XML_TYPES = frozenset({"application/xml", "text/xml"})
JSON_TYPES = frozenset({"application/json", "text/json"})
MAX_DEPTH = 16
MAX_ELEMENTS = 2000


class HikvisionIsapi:
    opens_gate = False

    def parse(self, content_type: str, body: bytes, arrival_ns: int) -> Parsed:
        kind = _media_type(content_type)
        images: list[Image] = []
        if kind == "multipart/form-data" or kind == "multipart/mixed":
            documents, images = _from_parts(multipart.split(body, content_type))
        elif kind in XML_TYPES:
            documents = [parse_xml(body)]
        elif kind in JSON_TYPES:
            documents = [parse_json(body)]
        elif kind == "" or kind == "text/plain":  # unlabelled: sniff
            documents = [parse_xml(body) if body.lstrip()[:1] == b"<" else parse_json(body)]
        else:
            raise Refused(415, "unsupported_media_type", f"{content_type[:60]!r}")
        events = [e for e in (_event(d, arrival_ns) for d in documents) if e.reading is not None]
        if not events:
            return Parsed(None, kind="heartbeat")
        first, *more = events
        first.images = images
        first.more = more
        return first

    def answer(self, parsed: Parsed, opens: bool) -> Answer:
        return Answer(200, b"OK", "text/plain")


# -- decoding ----------------------------------------------------------------------------

def parse_xml(body: bytes) -> Any:
    """XML -> nested dicts of element text (namespaces dropped; a repeated element
    becomes a list). Entities, DTDs and external references are refused by defusedxml."""
    try:
        root = xmlsafe.parse(body)
    except xmlsafe.XmlRefused as exc:
        raise malformed("invalid_xml", str(exc)[:80]) from None
    counter = [0]
    return {_local(root.tag): _element(root, 0, counter)}


def _local(tag: Any) -> str:
    return xmlsafe.local(str(tag))


def _element(element: xmlsafe.Element, depth: int, counter: list[int]) -> Any:
    counter[0] += 1
    if depth > MAX_DEPTH or counter[0] > MAX_ELEMENTS:
        raise malformed("invalid_xml", "too deep or too many elements")
    children = list(element)
    if not children:
        return (element.text or "").strip()
    result: dict[str, Any] = {}
    for child in children:
        name = _local(child.tag)
        value = _element(child, depth + 1, counter)
        if name in result:
            previous = result[name]
            result[name] = [*previous, value] if type(previous) is list else [previous, value]
        else:
            result[name] = value
    return result


def _from_parts(parts: list[multipart.Part]) -> tuple[list[Any], list[Image]]:
    """Every event part (XML or JSON, by type or file name) and the pictures. A device
    sends one event per post, but a body with two event parts must not lose the second
    (it used to be kept as a picture): each becomes an event of its own."""
    documents: list[Any] = []
    images: list[Image] = []
    for part in parts:
        kind = _media_type(part.content_type)
        label = (part.filename or part.name).lower()
        if kind in XML_TYPES or label.endswith(".xml"):
            documents.append(parse_xml(part.data))
        elif kind in JSON_TYPES or label.endswith(".json") or label == "event_log":
            documents.append(parse_json(part.data))
        else:
            images.append(Image(_safe_name(part.filename or part.name), part.data))
    if not documents:
        raise malformed("invalid_payload", "no XML or JSON part in the multipart body")
    return documents, images


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1])[:64] or "picture"


# -- events ------------------------------------------------------------------------------

def _event(document: Any, arrival_ns: int) -> Parsed:
    """One ``EventNotificationAlert`` (a heartbeat has no reading)."""
    if type(document) is dict and type(document.get("EventNotificationAlert")) is dict:
        document = document["EventNotificationAlert"]
    if type(document) is not dict:
        raise malformed("invalid_payload", "no EventNotificationAlert object")
    event_type = as_text(document.get("eventType"))
    if event_type is None:
        raise malformed("invalid_payload", "no eventType")
    if event_type.lower() == "heartbeat":
        return Parsed(None, kind="heartbeat")
    return EVENT_TYPES.get(event_type, _camera_event)(document, arrival_ns)


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _time(document: dict[str, Any], serial: int | None, arrival_ns: int) -> int:
    ns = iso_ns(document.get("dateTime"))
    if ns is None:
        return arrival_ns
    if serial is not None and ns % 10**9 == 0:
        ns += (serial % 1000) * 10**6
    return ns


def _tags(**values: Any) -> dict[str, str]:
    return {k: t for k, v in values.items() if (t := as_text(v)) is not None}


CREDENTIAL_FIELD: dict[str, str] = {"card": "card", "face": "person"}
"""The contract's one identity field per kind (docs/schema.md); a terminal reports the
card number and the employee number behind it, and only the one that is the credential
gets the credential's name, or every card swipe would also count as a face."""


def _access(document: dict[str, Any], arrival_ns: int) -> Parsed:
    """An access terminal's event, shaped by the access-event contract (docs/schema.md):
    tags ``kind`` and ``result`` (from majorEventType/subEventType, gateway/accessevents),
    one identity field (``card`` for a card, ``person`` = the employee number for a face),
    the employee number of any other event as ``holder``, ``event_id`` = serialNo."""
    event = _dict(document.get("AccessControllerEvent"))
    serial = as_int(event.get("serialNo"))
    major, minor = as_int(event.get("majorEventType")), as_int(event.get("subEventType"))
    if major is None and minor is None:
        raise malformed("invalid_payload", "AccessControllerEvent without majorEventType or "
                        "subEventType")
    kind, result = hikvision_access(major or 0, minor or 0)
    card = as_text(event.get("cardNo"))
    employee = as_text(event.get("employeeNoString")) or as_text(event.get("employeeNo"))
    values: dict[str, FieldValue | None] = {
        "holder": employee if kind != "face" else None,
        "major_event": major,
        "sub_event": minor,
        "serial": serial,
        "event_id": str(serial) if serial is not None else None,
        "verify_mode": as_text(event.get("currentVerifyMode")),
    }
    if kind in CREDENTIAL_FIELD:
        values[CREDENTIAL_FIELD[kind]] = card if kind == "card" else employee
    fields = clean_fields(values)
    tags = _tags(reader=event.get("cardReaderNo"), door=event.get("doorNo"), kind=kind,
                 result=result)
    reading = Reading("access_event", tags, fields, _time(document, serial, arrival_ns))
    return Parsed(reading, key=f"acs:{serial}" if serial is not None else None)


def _anpr(document: dict[str, Any], arrival_ns: int) -> Parsed:
    anpr = _dict(document.get("ANPR"))
    plate = as_text(anpr.get("licensePlate"))
    if plate is None:
        raise malformed("missing_plate", "ANPR.licensePlate")
    fields = clean_fields({
        "plate": plate,
        "confidence": as_float(anpr.get("confidenceLevel")),
        "plate_color_name": as_text(anpr.get("plateColor")),
        "direction_name": as_text(anpr.get("direction")),
        "vehicle_type": as_text(anpr.get("vehicleType")),
    })
    channel = document.get("channelID")
    uuid = as_text(document.get("UUID"))
    stamp = as_text(document.get("dateTime"))
    key = f"anpr:{uuid}" if uuid else (f"anpr:{stamp}:{as_text(channel)}:{plate}"
                                       if stamp else None)
    reading = Reading("vehicle_event", _tags(channel=channel), fields,
                      _time(document, None, arrival_ns))
    return Parsed(reading, key=key, plate=plate)


def _camera_event(document: dict[str, Any], arrival_ns: int) -> Parsed:
    fields = clean_fields({
        "event_type": as_text(document.get("eventType")),
        "event_state": as_text(document.get("eventState")),
        "active_post_count": as_int(document.get("activePostCount")),
    })
    reading = Reading("camera_event", _tags(channel=document.get("channelID")), fields,
                      _time(document, None, arrival_ns))
    return Parsed(reading)


EVENT_TYPES = {
    "AccessControllerEvent": _access,
    "ANPR": _anpr,
}
