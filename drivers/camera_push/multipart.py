"""``multipart/form-data`` bodies split into parts (RFC 7578), from bytes already read
under the size limit. Pure: the receiver reads the body (bounded), this only slices it.

Hikvision ANPR cameras post ``anpr.xml`` plus two JPEGs; access terminals post the event
JSON plus a face picture. A hostile body cannot make this slow or large: it scans each
byte a bounded number of times and keeps at most ``MAX_PARTS`` parts (views, not copies,
until a part is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.camera_push.payload import header_params, malformed

MAX_PARTS = 16
MAX_PART_HEADERS = 8 * 1024


@dataclass(frozen=True)
class Part:
    name: str
    filename: str
    content_type: str
    data: bytes


def boundary_of(content_type: str) -> bytes:
    boundary = header_params(content_type).get("boundary", "")
    if not 1 <= len(boundary) <= 200:
        raise malformed("invalid_multipart", "no usable boundary in Content-Type")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise malformed("invalid_multipart", "non-ASCII boundary") from None


def split(body: bytes, content_type: str) -> list[Part]:
    """The parts of ``body``; Refused (400) when it is not a complete multipart body."""
    delimiter = b"--" + boundary_of(content_type)
    view = memoryview(body)
    pos = body.find(delimiter)
    if pos < 0:
        raise malformed("invalid_multipart", "boundary not found")
    pos += len(delimiter)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # the close delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or line_end - pos > 256:  # transport padding after the delimiter
            raise malformed("invalid_multipart", "delimiter line not terminated")
        start = line_end + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise malformed("invalid_multipart", "body ends inside a part")
        parts.append(_part(view[start:end]))
        if len(parts) > MAX_PARTS:
            raise malformed("invalid_multipart", f"more than {MAX_PARTS} parts")
        pos = end + 2 + len(delimiter)


def _part(raw: memoryview) -> Part:
    data = raw.tobytes() if len(raw) <= MAX_PART_HEADERS else raw[:MAX_PART_HEADERS].tobytes()
    head_end = data.find(b"\r\n\r\n")
    if raw[:2] == b"\r\n":
        head_end = -2  # a part without headers
    elif head_end < 0:
        raise malformed("invalid_multipart", "part headers not terminated")
    headers: dict[str, str] = {}
    for line in data[:max(head_end, 0)].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise malformed("invalid_multipart", "bad part header line")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    disposition = header_params(headers.get("content-disposition", ""))
    return Part(disposition.get("name", ""), disposition.get("filename", ""),
                headers.get("content-type", ""), raw[head_end + 4:].tobytes())
