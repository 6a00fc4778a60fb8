"""Simulated pushing devices, written from the vendors' published formats, for tests,
the benchmark and demos. They speak HTTP/1.1 over plain asyncio streams (no HTTP
library), so they can also misbehave: send slowly, lie about lengths, hang up early.

* :class:`PlateCamera`: an ``AlarmInfoPlate`` barrier camera that posts each plate
  read and retries a post it got no answer to (same body: same ``plateid``).
* :class:`HikvisionTerminal`: ISAPI "listening host" pushes: an access terminal's
  ``AccessControllerEvent`` as XML, JSON or multipart (JSON + face picture), and an ANPR
  camera's three-part multipart (``anpr.xml`` + two pictures).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from xml.sax.saxutils import escape


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> object:
        return json.loads(self.body)


def request_bytes(path: str, body: bytes, content_type: str, *, host: str = "gateway",
                  extra: dict[str, str] | None = None, method: str = "POST") -> bytes:
    headers = {"Host": host, "Content-Type": content_type, "Content-Length": str(len(body)),
               "Connection": "close", **(extra or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in
                                                       headers.items() if v is not None)
    return head.encode("latin-1") + b"\r\n" + body


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if status == 100:
        return await read_reply(reader)
    length = headers.get("content-length")
    body = await reader.readexactly(int(length)) if length else await reader.read()
    return Reply(status, body, headers)


async def send(port: int, raw: bytes, *, host: str = "127.0.0.1", source: str | None = None,
               answer_within: float = 30.0, hang_up: bool = False) -> Reply | None:
    """Send one raw request and read the reply; with ``hang_up`` the connection is closed
    right after sending (the device never sees the answer, as when a reply is lost)."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        writer.write(raw)
        await writer.drain()
        if hang_up:
            return None
        async with asyncio.timeout(answer_within):
            return await read_reply(reader)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def post(port: int, path: str, body: bytes, content_type: str, *,
               source: str | None = None, answer_within: float = 30.0,
               extra: dict[str, str] | None = None) -> Reply:
    reply = await send(port, request_bytes(path, body, content_type, extra=extra),
                       source=source, answer_within=answer_within)
    assert reply is not None
    return reply


# -- the plate camera ----------------------------------------------------------------------

def alarm_info_plate(plate: str, plate_id: int, *, serial: str = "e5f7a8c3-01",
                     sec: int | None = None, usec: int = 0, color: int = 1,
                     confidence: int = 98, direction: int = 4,
                     image: bytes | None = None) -> dict[str, object]:
    """An ``AlarmInfoPlate`` post as the camera sends it (field names of the vendor's
    HTTP push; ``colorType`` 1 = blue, ``direction`` 4 = toward the camera)."""
    sec = int(time.time()) if sec is None else sec
    result: dict[str, object] = {
        "license": plate, "colorType": color, "type": 1, "confidence": confidence,
        "bright": 0, "direction": direction, "location": {"RECT": {"left": 10, "top": 20,
                                                                   "right": 90, "bottom": 40}},
        "timeUsed": 15, "carBright": 0, "carColor": 0, "plateid": plate_id,
        "triggerType": 8, "timeStamp": {"Timeval": {"sec": sec, "usec": usec}},
    }
    if image is not None:
        import base64

        result["imageFile"] = base64.b64encode(image).decode()
        result["imageFileLen"] = len(image)
    return {"AlarmInfoPlate": {"channel": 0, "deviceName": "IVS", "ipaddr": "192.168.1.100",
                               "serialno": serial, "result": {"PlateResult": result}}}


class PlateCamera:
    """Posts plate reads to ``/push/<id>/<token>``; a post without an answer (timeout,
    reset, 5xx) is sent again, unchanged, up to ``retries`` times."""

    def __init__(self, port: int, device_id: str, token: str, *, serial: str = "e5f7a8c3-01",
                 retries: int = 3, timeout: float = 10.0, source: str | None = None) -> None:
        self.port = port
        self.path = f"/push/{device_id}/{token}"
        self.serial = serial
        self.retries = retries
        self.timeout = timeout
        self.source = source
        self.plate_id = 0
        self.attempts = 0

    def event(self, plate: str, **kwargs: object) -> bytes:
        self.plate_id += 1
        return json.dumps(alarm_info_plate(plate, self.plate_id, serial=self.serial,
                                           **kwargs),  # type: ignore[arg-type]
                          ensure_ascii=False).encode()

    async def push(self, body: bytes, *, lose_answers: int = 0) -> Reply:
        """Post ``body`` until answered; the first ``lose_answers`` attempts hang up
        before reading the answer (the gateway has committed, the camera does not know)."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            self.attempts += 1
            raw = request_bytes(self.path, body, "application/json")
            try:
                reply = await send(self.port, raw, source=self.source, answer_within=self.timeout,
                                   hang_up=attempt < lose_answers)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                last = exc
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if reply is None or reply.status >= 500:
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            return reply
        raise ConnectionError(f"no answer after {self.retries + 1} attempts: {last}")


# -- the Hikvision terminal ----------------------------------------------------------------

ISAPI_NS = "http://www.isapi.org/ver20/XMLSchema"


def fake_jpeg(size: int, seed: int = 0) -> bytes:
    """JPEG markers around noise (fixed by ``seed``, random for 0): the receiver never
    decodes pictures, only counts them."""
    filler = max(0, size - 4)
    body = os.urandom(filler) if seed == 0 else random.Random(seed).randbytes(filler)
    return b"\xff\xd8" + body + b"\xff\xd9"


def access_event(serial: int, *, card: str = "3207401152", employee: str = "1001",
                 major: int = 5, minor: int = 75, when: str = "2026-03-04T08:15:30+08:00",
                 reader: int = 1, verify_mode: str = "cardOrFace") -> dict[str, object]:
    """``EventNotificationAlert`` of an access terminal (JSON form)."""
    return {
        "ipAddress": "10.0.5.31", "portNo": 80, "protocol": "HTTP",
        "macAddress": "44:19:b6:00:00:01", "channelID": 1, "dateTime": when,
        "activePostCount": 1, "eventType": "AccessControllerEvent", "eventState": "active",
        "eventDescription": "Access Controller Event",
        "AccessControllerEvent": {
            "deviceName": "Lobby", "majorEventType": major, "subEventType": minor,
            "name": "Zhang San", "cardReaderKind": 1, "cardReaderNo": reader,
            "verifyNo": 1, "employeeNoString": employee, "cardNo": card,
            "serialNo": serial, "userType": "normal", "currentVerifyMode": verify_mode,
            "mask": "no", "frontSerialNo": serial - 1, "picturesNumber": 1,
        },
    }


def _xml(name: str, value: object) -> str:
    if isinstance(value, dict):
        inner = "".join(_xml(k, v) for k, v in value.items())
        return f"<{name}>{inner}</{name}>"
    return f"<{name}>{escape(str(value))}</{name}>"


def to_xml(alert: dict[str, object]) -> bytes:
    inner = "".join(_xml(k, v) for k, v in alert.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<EventNotificationAlert version="2.0" '
            f'xmlns="{ISAPI_NS}">{inner}</EventNotificationAlert>').encode()


def anpr_alert(plate: str, *, uuid: str, when: str = "2026-03-04T08:15:30+08:00",
               channel: int = 1) -> bytes:
    """``anpr.xml`` of an ANPR camera's push."""
    return to_xml({
        "ipAddress": "10.0.5.41", "portNo": 80, "protocol": "HTTP",
        "macAddress": "44:19:b6:00:00:02", "channelID": channel, "dateTime": when,
        "activePostCount": 1, "eventType": "ANPR", "eventState": "active",
        "eventDescription": "ANPR", "channelName": "Gate West",
        "ANPR": {"country": 3, "licensePlate": plate, "line": 1, "direction": "forward",
                 "confidenceLevel": 97, "plateType": "unknown", "plateColor": "blue",
                 "licenseBright": 0, "dangmark": "no", "twoWheelVehicle": "no",
                 "threeWheelVehicle": "no", "plateCharBelieve": "97,98,99,97,96,98,99",
                 "vehicleType": "vehicle", "detectDir": 8, "detectType": 0,
                 "alarmDataType": 0, "vehicleInfo": {"index": 1, "colorDepth": 2,
                                                     "color": "white", "length": 0},
                 "pictureInfoList": {"pictureInfo": {"fileName": "licensePlatePicture.jpg",
                                                     "type": "licensePlatePicture"}}},
        "UUID": uuid, "picNum": 2,
    })


def multipart_body(parts: list[tuple[str, str, str, bytes]], boundary: str) -> bytes:
    """(name, filename, content type, data) parts as ``multipart/form-data``."""
    out = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                     else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                   f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n"
                   .encode() + data + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


def anpr_multipart(plate: str, *, uuid: str, picture_bytes: int = 85_000,
                   boundary: str = "boundary-anpr-7d") -> tuple[bytes, str]:
    """An ANPR post of about ``2 * picture_bytes``: anpr.xml plus two pictures."""
    parts = [("anpr.xml", "anpr.xml", "text/xml", anpr_alert(plate, uuid=uuid)),
             ("licensePlatePicture.jpg", "licensePlatePicture.jpg", "image/jpeg",
              fake_jpeg(picture_bytes // 8, seed=1)),
             ("detectionPicture.jpg", "detectionPicture.jpg", "image/jpeg",
              fake_jpeg(picture_bytes * 2 - picture_bytes // 8, seed=2))]
    return multipart_body(parts, boundary), f"multipart/form-data; boundary={boundary}"


class HikvisionTerminal:
    """An ISAPI device whose listening host is ``/push/<id>/<token>``."""

    def __init__(self, port: int, device_id: str, token: str, *,
                 source: str | None = None) -> None:
        self.port = port
        self.path = f"/push/{device_id}/{token}"
        self.source = source

    async def push(self, body: bytes, content_type: str) -> Reply:
        return await post(self.port, self.path, body, content_type, source=self.source)

    async def access_xml(self, serial: int, **kwargs: object) -> Reply:
        return await self.push(to_xml(access_event(serial, **kwargs)),  # type: ignore[arg-type]
                               "application/xml")

    async def access_json(self, serial: int, **kwargs: object) -> Reply:
        body = json.dumps(access_event(serial, **kwargs)).encode()  # type: ignore[arg-type]
        return await self.push(body, "application/json")

    async def access_multipart(self, serial: int, picture_bytes: int = 30_000,
                               **kwargs: object) -> Reply:
        event = json.dumps(access_event(serial, **kwargs)).encode()  # type: ignore[arg-type]
        body = multipart_body([("event_log", "", "application/json", event),
                               ("Picture", "Picture.jpg", "image/jpeg",
                                fake_jpeg(picture_bytes, seed=serial))], "MIME_boundary")
        return await self.push(body, "multipart/form-data; boundary=MIME_boundary")

    async def anpr(self, plate: str, uuid: str, picture_bytes: int = 85_000) -> Reply:
        body, content_type = anpr_multipart(plate, uuid=uuid, picture_bytes=picture_bytes)
        return await self.push(body, content_type)
