"""ONVIF ``GetSystemDateAndTime``: the one ONVIF call that needs no authentication, asked
to learn the camera's clock. WS-UsernameToken authentication (every other ONVIF call)
fails when the clocks differ by more than about five minutes, and event times are
stamped by the camera: the skew is worth reporting on its own.

A plain SOAP 1.2 POST through the devices' HTTP client module; the answer is parsed with
gateway.xmlsafe (a camera's XML is not trusted).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from drivers.event_stream.client import DeviceHttp
from drivers.event_stream.conditions import BadAnswer
from gateway import xmlsafe

REQUEST = (b'<?xml version="1.0" encoding="UTF-8"?>'
           b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">'
           b'<s:Body><GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/>'
           b"</s:Body></s:Envelope>")
CONTENT_TYPE = ('application/soap+xml; charset=utf-8; '
                'action="http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTime"')
PARTS = ("Year", "Month", "Day", "Hour", "Minute", "Second")


def parse_utc(body: bytes) -> float:
    """The camera's UTC time (epoch seconds) from a GetSystemDateAndTimeResponse."""
    try:
        root = xmlsafe.parse(body)
    except xmlsafe.XmlRefused as exc:
        raise BadAnswer(f"ONVIF answer: {exc}") from None
    utc = xmlsafe.find(root, "Body", "GetSystemDateAndTimeResponse", "SystemDateAndTime",
                       "UTCDateTime")
    if utc is None:
        raise BadAnswer("ONVIF answer without SystemDateAndTime/UTCDateTime")
    values = []
    for name in PARTS:
        text = xmlsafe.text(utc, "Date" if name in PARTS[:3] else "Time", name)
        if text is None or not text.isdigit() or len(text) > 4:
            raise BadAnswer(f"ONVIF UTCDateTime: {name} missing or not a number")
        values.append(int(text))
    try:
        year, month, day, hour, minute, second = values
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError as exc:
        raise BadAnswer(f"ONVIF UTCDateTime is not a date: {exc}") from None


async def clock_skew(http: DeviceHttp, path: str, timeout: float) -> float:  # noqa: ASYNC109
    """Camera clock minus gateway clock, in seconds (the answer's one-second resolution
    and half the round trip are the error)."""
    sent = time.time()
    body = await http.request("POST", path, data=REQUEST, content_type=CONTENT_TYPE,
                              timeout=timeout)
    received = time.time()
    return parse_utc(body) - (sent + received) / 2
