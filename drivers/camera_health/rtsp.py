"""A minimal RTSP client for probing: OPTIONS, then DESCRIBE with Digest or Basic auth.

RTSP/1.0 (RFC 2326) is HTTP-shaped text over TCP, so asyncio streams do; no RTP is ever
set up. The answers mean: any RTSP answer = the camera is alive (last-seen); 401 after
our credentials = ``auth_failed`` (alive, wrong password); 404 = ``bad_answer`` (wrong
stream path); no TCP connection or no answer = ``unreachable``. Bytes that are no RTSP
answer (garbage, a line without an end, an answer cut off) are ``bad_answer`` too: the
device answered, wrongly (they were ``unreachable``, found by the outside probe).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from dataclasses import dataclass

from drivers.event_stream.conditions import BadAnswer, Unreachable
from drivers.event_stream.digest import digest_response, parse_auth_params
from gateway.errors import DeviceAuthError

MAX_LINE = 8192
READ_LIMIT = MAX_LINE * 2
"""The stream reader's buffer limit: a line without an end within it is no RTSP."""
MAX_BODY = 64 * 1024


@dataclass
class RtspAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class ProbeResult:
    rtt: float
    """Seconds the TCP connect took."""
    answered: bool
    """The camera said something in RTSP (alive, whatever it said)."""


class RtspProbe:
    def __init__(self, host: str, port: int, path: str | None, username: str | None,
                 password: str | None, timeout: float, allow_basic: bool = False) -> None:
        self.host, self.port, self.path = host, port, path
        self.allow_basic = allow_basic
        """Answer a Basic challenge (the password in clear over plain RTSP). Off by
        default: the server picks the scheme, so anything answering on the camera's
        address could otherwise ask for Basic and read the password (found by the
        outside probe)."""
        self.username, self.password, self.timeout = username, password, timeout
        authority = f"[{host}]" if ":" in host else host
        self.base = f"rtsp://{authority}:{port}"
        self._cseq = 0
        self.answered = False
        self.rtt: float | None = None
        """TCP connect time of the last probe (None: no connection)."""

    async def run(self) -> float:
        """Probe once; returns the TCP connect time. Raises the conditions' errors."""
        self.answered = False
        self.rtt = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port,
                                                               limit=READ_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"{self.base}: no TCP connection: "
                              f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        rtt = self.rtt = time.monotonic() - started
        try:
            # Some cameras want credentials for OPTIONS too: the same 401 handling.
            answer = await self._authorised(reader, writer, "OPTIONS", self.base + "/", {})
            if answer.status != 200:
                raise BadAnswer(f"{self.base}: OPTIONS answered {answer.status}")
            if self.path is not None:
                url = self.base + self.path
                answer = await self._authorised(reader, writer, "DESCRIBE", url,
                                                {"Accept": "application/sdp"})
                if answer.status == 404:
                    raise BadAnswer(f"{url}: 404, wrong stream path")
                if answer.status != 200:
                    raise BadAnswer(f"{url}: DESCRIBE answered {answer.status}")
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await writer.wait_closed()
        return rtt

    async def _authorised(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          method: str, url: str, headers: dict[str, str]) -> RtspAnswer:
        """The answer to ``method``, answering a 401 challenge once with our credentials;
        a second 401 is ``auth_failed`` (the camera is alive, the password is wrong)."""
        answer = await self._request(reader, writer, method, url, headers)
        if answer.status != 401:
            return answer
        if not self.username:
            raise DeviceAuthError(f"{url}: 401, and no credentials are configured")
        header = self._authorization(method, url, answer.headers.get("www-authenticate", ""))
        answer = await self._request(reader, writer, method, url,
                                     {**headers, "Authorization": header})
        if answer.status == 401:
            raise DeviceAuthError(f"{url}: 401, credentials refused")
        return answer

    def _authorization(self, method: str, url: str, challenge: str) -> str:
        scheme, _, rest = challenge.strip().partition(" ")
        user, password = self.username or "", self.password or ""
        if scheme.lower() == "basic":
            if not self.allow_basic:
                raise DeviceAuthError(f"{url}: the camera asks for Basic auth (password in "
                                      "clear); not sent: set rtsp_auth: basic if it must be")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            return f"Basic {token}"
        if scheme.lower() != "digest":
            raise BadAnswer(f"{url}: unknown auth scheme {scheme[:20]!r}")
        params = parse_auth_params(rest)
        cnonce = secrets.token_hex(8)
        response = digest_response(user, password, method, url, params, "00000001", cnonce)
        fields = [f'username="{user}"', f'realm="{params.get("realm", "")}"',
                  f'nonce="{params.get("nonce", "")}"', f'uri="{url}"',
                  f'response="{response}"']
        if "auth" in params.get("qop", ""):
            fields += ["qop=auth", "nc=00000001", f'cnonce="{cnonce}"']
        if "opaque" in params:
            fields.append(f'opaque="{params["opaque"]}"')
        return "Digest " + ", ".join(fields)

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       method: str, url: str, headers: dict[str, str] | None = None
                       ) -> RtspAnswer:
        self._cseq += 1
        lines = [f"{method} {url} RTSP/1.0", f"CSeq: {self._cseq}", "User-Agent: iotgw"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            async with asyncio.timeout(self.timeout):
                await writer.drain()
                return await self._read_answer(reader, url)
        except TimeoutError:
            raise Unreachable(f"{url}: no RTSP answer within {self.timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise Unreachable(f"{url}: connection lost: {type(exc).__name__}") from None

    async def _read_answer(self, reader: asyncio.StreamReader, url: str) -> RtspAnswer:
        status_line = await self._line(reader, url, first=True)
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("RTSP/") or not parts[1].isdigit():
            raise BadAnswer(f"{url}: not an RTSP answer: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        for _ in range(100):
            line = await self._line(reader, url)
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise BadAnswer(f"{url}: too many headers")
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise BadAnswer(f"{url}: bad Content-Length {length[:20]!r}")
        try:
            body = await reader.readexactly(int(length))
        except asyncio.IncompleteReadError as exc:
            raise BadAnswer(f"{url}: answer cut off: {len(exc.partial)} of {length} body "
                            "bytes") from None
        return RtspAnswer(int(parts[1]), headers, body)

    async def _line(self, reader: asyncio.StreamReader, url: str, first: bool = False) -> str:
        """One line of the answer. Nothing at all before the connection closed is
        ``unreachable`` (no answer); any bytes that make no line (garbage, a line longer
        than READ_LIMIT, an answer cut off) are ``bad_answer``: the device did answer."""
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            self.answered = True
            raise BadAnswer(f"{url}: no line end within {READ_LIMIT} bytes: not an RTSP "
                            "answer") from None
        except asyncio.IncompleteReadError as exc:
            if first and not exc.partial:
                raise Unreachable(f"{url}: connection closed without an answer") from None
            self.answered = True
            raise BadAnswer(f"{url}: not an RTSP answer (cut off after "
                            f"{len(exc.partial)} bytes: {exc.partial[:20]!r})") from None
        self.answered = True
        return raw.decode("latin-1").strip()
