"""Split an endless multipart HTTP body (Hikvision alertStream, Dahua eventManager) into
parts, from bytes as they arrive.

Why not aiohttp's MultipartReader or a form-upload parser: those expect a finished upload
with a closing delimiter and trust the framing. A camera's event stream never ends, mixes
``text/plain``, XML, JSON and JPEG parts, and firmware gets the framing wrong in small
ways: a missing ``Content-Length``, a length one CRLF short or long, bare LF line ends, a
boundary that differs from the one in the response header, stray bytes between parts.

Rules, in order of trust:

* A part whose headers carry a usable ``Content-Length`` is cut at that length (binary
  JPEG parts may contain anything, so the length is what counts), and handed out as soon
  as its bytes are in, not when the next part arrives (a heartbeat later). When a
  delimiter line starts *inside* the counted bytes, the length lied: the part is cut
  there instead (``bad_length``). Stray bytes before the next delimiter are skipped
  (``garbage``).
* A part without a usable length ends at the next delimiter.
* A part larger than ``max_part`` is skipped without being held in memory
  (``part_too_large``); headers longer than ``max_header`` are skipped (``bad_headers``).

Nothing here raises on bad input: problems come out as :class:`Malformed` items between
the parts, for the caller to count and log once per kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_HEADER = 8192


@dataclass(frozen=True, slots=True)
class Part:
    headers: dict[str, str]
    """Header names lower-cased; the last of a repeated name wins."""
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Malformed:
    kind: str
    """garbage | bad_headers | bad_length | part_too_large"""
    detail: str = ""


Item = Part | Malformed


def boundary_of(content_type: str | None) -> str | None:
    """The ``boundary`` parameter of a Content-Type header, unquoted; None if absent."""
    if not content_type:
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"').strip()
            return value or None
    return None


@dataclass
class MultipartSplitter:
    """Feed bytes, get parts. ``boundary`` None is learnt from the first ``--token``
    line of the body; so is a boundary the header announced but the body never uses
    (some firmware announces one and sends another)."""

    boundary: str | None
    max_part: int = 2 * 1024 * 1024
    max_header: int = MAX_HEADER
    _buf: bytearray = field(default_factory=bytearray)
    _state: str = "seek"
    _headers: dict[str, str] = field(default_factory=dict)
    _skip: int = 0
    _confirmed: bool = False
    finished: bool = False
    """The closing delimiter ``--boundary--`` was seen."""

    @property
    def _delim(self) -> bytes | None:
        return None if self.boundary is None else b"--" + self.boundary.encode("latin-1")

    def feed(self, data: bytes) -> list[Item]:
        self._buf += data
        out: list[Item] = []
        steps: dict[str, Callable[[list[Item]], None]] = {
            "seek": self._seek, "headers": self._read_headers, "body": self._read_body,
            "skip": self._skip_bytes}
        while True:
            before = (self._state, len(self._buf))
            steps[self._state](out)
            if (self._state, len(self._buf)) == before:
                return out

    # -- states ------------------------------------------------------------------------

    def _seek(self, out: list[Item]) -> None:
        """Find the next delimiter line; anything but blank lines before it is garbage
        (one item per stretch, not per byte)."""
        buf = self._buf
        delim = self._delim
        at = -1 if delim is None else _find_delimiter(buf, delim)
        if at < 0 and not self._confirmed:
            learnt = _learn_boundary(buf)
            if learnt is not None:
                self.boundary = learnt
                delim = self._delim
                assert delim is not None
                at = _find_delimiter(buf, delim)
        if at < 0:
            # Keep a tail that could be the start of a delimiter; the rest is garbage.
            keep = (len(delim) + 2) if delim is not None else 200
            if len(buf) > keep:
                dropped = bytes(buf[:-keep])
                if dropped.strip():
                    out.append(Malformed("garbage", _show(dropped)))
                del buf[:-keep]
            return
        if buf[:at].strip():
            out.append(Malformed("garbage", _show(bytes(buf[:at]))))
        assert delim is not None
        line_end = buf.find(b"\n", at)
        if line_end < 0:
            del buf[:at]
            return
        rest = bytes(buf[at + len(delim):line_end]).strip()
        del buf[:line_end + 1]
        self._confirmed = True
        if rest.startswith(b"--"):
            self.finished = True
            return
        self._state = "headers"
        self._headers = {}

    def _read_headers(self, out: list[Item]) -> None:
        buf = self._buf
        end, size = _blank_line(buf)
        if end < 0:
            if len(buf) > self.max_header:
                out.append(Malformed("bad_headers", f"headers over {self.max_header} bytes"))
                del buf[:len(buf) - 1]
                self._state = "seek"
            return
        if end > self.max_header:
            out.append(Malformed("bad_headers", f"headers over {self.max_header} bytes"))
            del buf[:end + size]
            self._state = "seek"
            return
        raw = bytes(buf[:end])
        del buf[:end + size]
        headers: dict[str, str] = {}
        for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
            if not line.strip():
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name.strip():
                out.append(Malformed("bad_headers", _show(line)))
                self._state = "seek"
                return
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        self._headers = headers
        length = _length(headers.get("content-length"))
        if length is not None and length > self.max_part:
            out.append(Malformed("part_too_large", f"Content-Length {length}"))
            self._skip = length
            self._state = "skip"
            return
        self._state = "body"

    def _read_body(self, out: list[Item]) -> None:
        buf = self._buf
        delim = self._delim
        assert delim is not None
        length = _length(self._headers.get("content-length"))
        if length is not None:
            inside = _find_delimiter(buf, delim, 0, length - 1) if length else -1
            if inside >= 0:
                out.append(Malformed("bad_length",
                                     f"Content-Length {length}, next part at {inside}"))
                self._emit(out, bytes(buf[:inside]))
                del buf[:inside]
            elif len(buf) >= length:
                self._emit(out, bytes(buf[:length]))
                del buf[:length]
            else:
                return
            self._state = "seek"
            return
        at = _find_delimiter(buf, delim)
        if at < 0:
            if len(buf) > self.max_part + len(delim):
                out.append(Malformed("part_too_large", "no Content-Length, no delimiter"))
                del buf[:len(buf) - len(delim) - 2]
                self._state = "seek"
            return
        self._emit(out, bytes(buf[:at]))
        del buf[:at]
        self._state = "seek"

    def _skip_bytes(self, out: list[Item]) -> None:
        n = min(self._skip, len(self._buf))
        del self._buf[:n]
        self._skip -= n
        if self._skip == 0:
            self._state = "seek"

    def _emit(self, out: list[Item], body: bytes) -> None:
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046); devices put
        # one, two or none there, so the text parsers strip whitespace themselves and
        # only one line end is removed here.
        if body.endswith(b"\r\n"):
            body = body[:-2]
        elif body.endswith(b"\n"):
            body = body[:-1]
        out.append(Part(self._headers, body))
        self._headers = {}


def _length(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 12:
        return None
    return int(value)


def _find_delimiter(buf: bytearray, delim: bytes, start: int = 0, end: int | None = None
                    ) -> int:
    """Index of ``delim`` at the start of a line (start of buffer or after LF), starting
    at or before ``end`` when given; -1 if none."""
    limit = len(buf) if end is None else min(len(buf), end + len(delim))
    at = buf.find(delim, start, limit)
    while at >= 0:
        if at == 0 or buf[at - 1] == 0x0A:
            return at
        at = buf.find(delim, at + 1, limit)
    return -1


def _blank_line(buf: bytearray) -> tuple[int, int]:
    """(index, size) of the first empty line (CRLFCRLF or LFLF), or (-1, 0)."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, 4
    if lf >= 0:
        return lf, 2
    return -1, 0


def _learn_boundary(buf: bytearray) -> str | None:
    """The token of the first line that looks like a delimiter (``--token``)."""
    pos = 0
    while True:
        at = buf.find(b"--", pos)
        if at < 0:
            return None
        if at == 0 or buf[at - 1] == 0x0A:
            end = buf.find(b"\n", at)
            if end < 0:
                return None
            token = bytes(buf[at + 2:end]).strip()
            if 0 < len(token) <= 70 and all(33 <= c < 127 for c in token) \
                    and not token.startswith(b"-"):
                return token.decode("ascii")
        pos = at + 2


def _show(data: bytes, limit: int = 60) -> str:
    text = data[:limit].decode("latin-1")
    printable = "".join(c if 32 <= ord(c) < 127 else "." for c in text)
    return printable + ("..." if len(data) > limit else "")
