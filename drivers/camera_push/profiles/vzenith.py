"""Plate cameras of the ``AlarmInfoPlate`` convention (Vzenith / 臻识 and compatibles).

The camera POSTs ``{"AlarmInfoPlate": {"serialno", "deviceName", "result":
{"PlateResult": {"license", "colorType", "type", "confidence", "direction", "plateid",
"timeStamp": {"Timeval": {"sec", "usec"}}, "imageFile"?...}}}}`` and opens the barrier
when the answer's ``Response_AlarmInfoPlate.info`` is ``"ok"``: the answer is ``"no"``
unless the installer's plate list says otherwise. Older units poll ("comet") with a
heartbeat and expect ``{"status": "ok"}``. Some firmware posts GB18030 rather than
UTF-8 text; both are read.

A plate at a barrier is a passage: ``access_event`` as docs/schema.md's contract has it
(tag ``kind=plate``; field ``plate``; ``event_id`` = plateid as text; the receiver adds
``gate_open`` and, when the gateway decides by an ``allow_list``, tag ``result``). The
other fields keep the names of the MQTT ``vzicloud-plate`` profile, but for the camera's
motion code, ``direction_code``: in ``access_event`` the tag ``direction`` is in/out.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from drivers.camera_push.payload import Answer, Image, Parsed, Refused, clean_fields, malformed
from drivers.camera_push.payload import media_type as _media_type
from drivers.camera_push.values import as_float, as_int, as_text, parse_json
from gateway.reading import Reading

MEASUREMENT = "access_event"
KIND = "plate"
JSON_TYPES = frozenset({"", "application/json", "text/json", "text/plain",
                        "application/x-www-form-urlencoded"})
"""Cameras label the JSON loosely; a multipart or XML body is refused with 415."""
IMAGE_KEYS = (("imageFile", "full.jpg"), ("imageFragmentFile", "plate.jpg"))


class VzenithPlate:
    opens_gate = True

    def parse(self, content_type: str, body: bytes, arrival_ns: int) -> Parsed:
        if _media_type(content_type) not in JSON_TYPES:
            raise Refused(415, "unsupported_media_type", f"{content_type[:60]!r}: expected JSON")
        document = _decode(body)
        if type(document) is not dict:
            raise malformed("invalid_payload", "not a JSON object")
        alarm = document.get("AlarmInfoPlate")
        if alarm is None:
            if "heartbeat" in document or "Heartbeat" in document:
                return Parsed(None, kind="poll")
            raise malformed("invalid_payload", "no AlarmInfoPlate")
        if type(alarm) is not dict:
            raise malformed("invalid_payload", "AlarmInfoPlate is not an object")
        result = _dict(_dict(alarm.get("result")).get("PlateResult"))
        plate = as_text(result.get("license"))
        if plate is None:
            raise malformed("missing_plate", "AlarmInfoPlate.result.PlateResult.license")
        plate_id = as_int(result.get("plateid"))
        serial = as_text(alarm.get("serialno"))
        fields = clean_fields({
            "plate": plate,
            "plate_color": as_int(result.get("colorType")),
            "plate_type": as_int(result.get("type")),
            "confidence": as_float(result.get("confidence")),
            "direction_code": as_int(result.get("direction")),
            "trigger_type": as_int(result.get("triggerType")),
            "plate_id": plate_id,
            "event_id": str(plate_id) if plate_id is not None else None,
        })
        images = _images(result)
        tags = {"kind": KIND}
        if name := as_text(alarm.get("deviceName")):
            tags["camera_name"] = name
        key = f"{serial or '-'}:{plate_id}" if plate_id is not None else None
        reading = Reading(MEASUREMENT, tags, fields, _time(result) or arrival_ns)
        return Parsed(reading, key=key, plate=plate, images=images)

    def answer(self, parsed: Parsed, opens: bool) -> Answer:
        if parsed.kind == "poll":
            return Answer(200, b'{"status":"ok"}')
        body = {"Response_AlarmInfoPlate": {"info": "ok" if opens else "no"}}
        return Answer(200, json.dumps(body, separators=(",", ":")).encode())


def _decode(body: bytes) -> Any:
    try:
        return parse_json(body)
    except Refused:
        try:
            text = body.decode("gb18030")
        except UnicodeDecodeError:
            raise malformed("invalid_json", "neither UTF-8 nor GB18030 JSON") from None
        return parse_json(text.encode("utf-8"))


def _dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _time(result: dict[str, Any]) -> int | None:
    timeval = _dict(_dict(result.get("timeStamp")).get("Timeval"))
    sec, usec = as_int(timeval.get("sec")), as_int(timeval.get("usec"))
    if sec is None or not 0 < sec < 2**33:
        return None
    return sec * 10**9 + (usec * 1000 if usec is not None and 0 <= usec < 10**6 else 0)


def _images(result: dict[str, Any]) -> list[Image]:
    images = []
    for key, name in IMAGE_KEYS:
        text = result.get(key)
        if type(text) is str and text:
            try:
                images.append(Image(name, base64.b64decode(text, validate=False)))
            except (binascii.Error, ValueError):
                continue  # a broken picture costs the picture, not the event
    return images
