"""Simulated Hikvision access terminals / cameras and Dahua devices: real aiohttp servers
on loopback, written from the vendors' published formats, for tests and the demo.

* :class:`HikvisionSim`: ``GET /ISAPI/Event/notification/alertStream`` (an endless
  ``multipart/mixed; boundary=boundary`` of XML camera alerts, JSON access-controller
  events and JPEG pictures, optionally ``videoloss inactive`` keep-alives) and
  ``POST /ISAPI/AccessControl/AcsEvent?format=json`` (the event-log search, paged at most
  ``page_cap`` records like real terminals), both behind HTTP Digest authentication.
  Its clock can run ahead of the real one (``clock_offset``), which is how a test plays
  a ten-minute outage in seconds.
* :class:`DahuaSim`: ``GET /cgi-bin/eventManager.cgi?action=attach&codes=[All]&heartbeat=N``
  (``multipart/x-mixed-replace; boundary=myboundary``, ``text/plain`` parts and a
  ``Heartbeat`` part every N seconds), Digest; it can be told to go silent (connection
  open, nothing sent) or to close the stream, as real firmware does.

Both can be stopped and started again on the same port (an outage), and both can be
told to answer the stream and then never deliver a part (``misbehave``: stall, garbage,
drip, close), as hung firmware or a hostile server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from drivers.event_stream.digest import digest_response, parse_auth_params

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"


class DigestGuard:
    """Server side of HTTP Digest (RFC 7616, MD5, qop=auth) and optionally Basic."""

    def __init__(self, username: str, password: str, realm: str = "iotgw-sim",
                 basic: bool = False) -> None:
        self.username, self.password, self.realm, self.basic = username, password, realm, basic
        self.nonces: set[str] = set()
        self.refused = 0
        self.accepted = 0

    def challenge(self) -> web.Response:
        self.refused += 1
        if self.basic:
            header = f'Basic realm="{self.realm}"'
        else:
            nonce = secrets.token_hex(16)
            self.nonces.add(nonce)
            header = f'Digest realm="{self.realm}", qop="auth", nonce="{nonce}", algorithm=MD5'
        return web.Response(status=401, headers={"WWW-Authenticate": header},
                            text="Unauthorized")

    def check(self, request: web.Request) -> web.Response | None:
        """None when authorised; else the 401 to answer."""
        header = request.headers.get("Authorization", "")
        if self.basic:
            import base64

            expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            if header == f"Basic {expected}":
                self.accepted += 1
                return None
            return self.challenge()
        if not header.startswith("Digest "):
            return self.challenge()
        params = parse_auth_params(header[7:])
        nonce = params.get("nonce", "")
        if params.get("username") != self.username or nonce not in self.nonces:
            return self.challenge()
        if params.get("uri") != request.raw_path:
            # RFC 7616 3.4.6: the uri directive is the request-target as sent; a client
            # that signs another form (encoded vs literal) is refused, as devices do.
            return self.challenge()
        expected = digest_response(self.username, self.password, request.method,
                                   params.get("uri", ""), {**params, "realm": self.realm},
                                   params.get("nc", ""), params.get("cnonce", ""))
        if params.get("response") != expected:
            return self.challenge()
        self.accepted += 1
        return None


def part(body: bytes, content_type: str, boundary: str, length: bool = True) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body + b"\r\n"


class _Server:
    """An aiohttp app on a fixed loopback port that can be stopped and restarted."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Queue[bytes | None]] = set()
        self.stream_connects = 0
        self._misbehave: str | None = None
        self._behaviour_changed = asyncio.Event()

    async def start(self, port: int | None = None) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port if port is not None else self.port,
                           reuse_address=True)
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            sockets = getattr(server, "sockets", None)
            assert sockets
            self.port = sockets[0].getsockname()[1]

    @property
    def misbehave(self) -> str | None:
        """What an accepted stream does instead of its parts (a key of ``MISBEHAVIOURS``:
        a hung firmware, a proxy, a hostile server); None: the device's own stream."""
        return self._misbehave

    @misbehave.setter
    def misbehave(self, value: str | None) -> None:
        self._misbehave = value
        self._behaviour_changed.set()
        self._behaviour_changed = asyncio.Event()

    async def stop(self) -> None:
        """Outage: open streams end, the port refuses connections until ``start``."""
        self.close_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close_streams(self) -> None:
        for queue in list(self._streams):
            queue.put_nowait(None)

    def broadcast(self, data: bytes) -> int:
        for queue in self._streams:
            queue.put_nowait(data)
        return len(self._streams)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    async def _serve_stream(self, request: web.Request, content_type: str,
                            idle: Callable[[], bytes | None], idle_every: float | None
                            ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        if self.misbehave is not None:
            self.stream_connects += 1
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await MISBEHAVIOURS[self.misbehave](self, response)
            return response
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._streams.add(queue)
        self.stream_connects += 1
        loop = asyncio.get_running_loop()
        # Heartbeats keep their own schedule whatever else is sent, as devices do.
        next_idle = loop.time() + idle_every if idle_every else None
        try:
            while True:
                wait = None if next_idle is None else max(0.0, next_idle - loop.time())
                try:
                    async with asyncio.timeout(wait):
                        data = await queue.get()
                except TimeoutError:
                    assert next_idle is not None and idle_every is not None
                    next_idle += idle_every
                    data = idle()
                    if data is None:
                        continue
                if data is None:
                    break
                await response.write(data)
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        finally:
            self._streams.discard(queue)
        # Closed on purpose (close_streams): a clean end of the response, as firmware that
        # ends its streams by itself does. stop() instead drops the connection.
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response


async def _stall(server: _Server, response: web.StreamResponse) -> None:
    await server._behaviour_changed.wait()


async def _garbage(server: _Server, response: web.StreamResponse) -> None:
    while server.misbehave == "garbage":
        await response.write(secrets.token_bytes(4096))
        await asyncio.sleep(0.05)


async def _drip(server: _Server, response: web.StreamResponse) -> None:
    while server.misbehave == "drip":
        await response.write(b"-")
        await asyncio.sleep(0.2)


async def _close(server: _Server, response: web.StreamResponse) -> None:
    await response.write_eof()


MISBEHAVIOURS: dict[str, Callable[[_Server, web.StreamResponse], Awaitable[None]]] = {
    "stall": _stall,
    "garbage": _garbage,
    "drip": _drip,
    "close": _close,
}
"""Streams that answer ``200 multipart`` and never deliver a part: nothing at all, random
bytes, a byte every 0.2 s, an end at once. Each lasts until ``misbehave`` changes."""


class HikvisionSim(_Server):
    """A Hikvision access terminal (or camera) with an alertStream and an event log."""

    BOUNDARY = "boundary"

    def __init__(self, username: str = "admin", password: str = "hik-pass", *,
                 keepalive: float | None = None, page_cap: int = 30,
                 utc_offset: int = 8 * 3600, basic: bool = False) -> None:
        super().__init__()
        self.guard = DigestGuard(username, password, basic=basic)
        self.keepalive = keepalive
        self.page_cap = page_cap
        self.tz = timezone(timedelta(seconds=utc_offset))
        self.clock_offset = 0.0
        self.log: list[dict[str, Any]] = []
        self.searches: list[dict[str, Any]] = []
        self.login_page = False
        """Answer the stream with an HTML page (a device behind a captive portal, or a
        firmware that wants its web login first)."""
        self.acs_answer: bytes | None = None
        """Answer every AcsEvent search with these bytes (200, application/json): a
        broken or hostile firmware; None: the real search."""
        self._serial = itertools.count(1001)
        self.app.router.add_get("/ISAPI/Event/notification/alertStream", self._alert_stream)
        self.app.router.add_post("/ISAPI/AccessControl/AcsEvent", self._acs_event)

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self.clock_offset, UTC).astimezone(self.tz)

    def iso(self, when: datetime | None = None) -> str:
        return (when or self.now()).replace(microsecond=0).isoformat()

    # -- what happens at the device ------------------------------------------------------

    def swipe(self, card: str, employee: str, *, on_stream: bool = True,
              minor: int = 1, picture: bool = False) -> dict[str, Any]:
        """A card swipe (minor 1: card verified) logged at the device's clock, and pushed
        on the open streams unless ``on_stream`` is False (an outage of the stream)."""
        record = {"major": 5, "minor": minor, "time": self.iso(), "cardNo": card,
                  "cardReaderNo": 1, "doorNo": 1, "employeeNoString": employee,
                  "serialNo": next(self._serial), "type": 0, "currentVerifyMode": "card",
                  "name": f"resident {employee}", "mask": "no"}
        self.log.append(record)
        if on_stream:
            self.broadcast(self.access_part(record))
            if picture:
                self.broadcast(part(JPEG, "image/jpeg", self.BOUNDARY))
        return record

    def access_part(self, record: dict[str, Any]) -> bytes:
        doc = {"ipAddress": "127.0.0.1", "portNo": self.port, "protocol": "HTTP",
               "macAddress": "44:19:b6:00:00:01", "channelID": 1, "dateTime": record["time"],
               "activePostCount": 1, "eventType": "AccessControllerEvent",
               "eventState": "active", "eventDescription": "Access Controller Event",
               "AccessControllerEvent": {
                   "deviceName": "lobby", "majorEventType": record["major"],
                   "subEventType": record["minor"], "name": record["name"],
                   "cardReaderNo": record["cardReaderNo"], "doorNo": record["doorNo"],
                   "employeeNoString": record["employeeNoString"], "cardNo": record["cardNo"],
                   "serialNo": record["serialNo"], "userType": "normal",
                   "currentVerifyMode": record["currentVerifyMode"], "mask": "no",
                   "attendanceStatus": "undefined"}}
        return part(json.dumps(doc).encode(), "application/json", self.BOUNDARY)

    def alert(self, event_type: str, state: str = "active", channel: int = 1,
              active_post_count: str = "1") -> bytes:
        """A camera alert as XML; returns the part (pushed to the open streams)."""
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\r\n'
               f'<EventNotificationAlert version="2.0" '
               f'xmlns="http://www.hikvision.com/ver20/XMLSchema">\r\n'
               f"<ipAddress>127.0.0.1</ipAddress>\r\n<portNo>{self.port}</portNo>\r\n"
               f"<protocol>HTTP</protocol>\r\n<macAddress>44:19:b6:00:00:01</macAddress>\r\n"
               f"<channelID>{channel}</channelID>\r\n<dateTime>{self.iso()}</dateTime>\r\n"
               + (f"<activePostCount>{active_post_count}</activePostCount>\r\n"
                  if active_post_count else "<activePostCount/>\r\n")
               + f"<eventType>{event_type}</eventType>\r\n<eventState>{state}</eventState>\r\n"
               f"<eventDescription>{event_type} alarm</eventDescription>\r\n"
               f"</EventNotificationAlert>\r\n").encode()
        data = part(xml, 'application/xml; charset="UTF-8"', self.BOUNDARY)
        self.broadcast(data)
        return data

    def _keepalive(self) -> bytes:
        xml = (f'<EventNotificationAlert version="2.0" '
               f'xmlns="http://www.hikvision.com/ver20/XMLSchema"><channelID>1</channelID>'
               f"<dateTime>{self.iso()}</dateTime><activePostCount>0</activePostCount>"
               f"<eventType>videoloss</eventType><eventState>inactive</eventState>"
               f"<eventDescription>videoloss alarm</eventDescription>"
               f"</EventNotificationAlert>").encode()
        return part(xml, "application/xml", self.BOUNDARY)

    # -- HTTP ----------------------------------------------------------------------------

    async def _alert_stream(self, request: web.Request) -> web.StreamResponse:
        refused = self.guard.check(request)
        if refused is not None:
            return refused
        if self.login_page:
            return web.Response(text="<html><body>Please log in</body></html>",
                                content_type="text/html")
        return await self._serve_stream(
            request, f"multipart/mixed; boundary={self.BOUNDARY}", self._keepalive,
            self.keepalive)

    async def _acs_event(self, request: web.Request) -> web.Response:
        refused = self.guard.check(request)
        if refused is not None:
            return refused
        if self.acs_answer is not None:
            self.searches.append({})
            return web.Response(body=self.acs_answer, content_type="application/json")
        try:
            cond = (await request.json())["AcsEventCond"]
            start = datetime.fromisoformat(cond["startTime"])
            end = datetime.fromisoformat(cond["endTime"])
            pos = int(cond["searchResultPosition"])
            size = min(int(cond["maxResults"]), self.page_cap)
            major, minor = int(cond.get("major", 0)), int(cond.get("minor", 0))
        except (ValueError, KeyError, TypeError):
            return web.json_response({"statusCode": 6, "statusString": "Invalid Content",
                                      "subStatusCode": "badJsonContent"}, status=400)
        self.searches.append(dict(cond))
        matches = [r for r in self.log
                   if start <= datetime.fromisoformat(r["time"]) <= end
                   and (major == 0 or r["major"] == major)
                   and (minor == 0 or r["minor"] == minor)]
        page = matches[pos:pos + size]
        more = pos + len(page) < len(matches)
        status = "MORE" if more else ("OK" if matches else "NO MATCH")
        return web.json_response({"AcsEvent": {
            "searchID": cond.get("searchID"), "responseStatusStrg": status,
            "numOfMatches": len(page), "totalMatches": len(matches), "InfoList": page}})


class DahuaSim(_Server):
    """A Dahua camera / NVR event stream with heartbeats; it can go silent or close."""

    BOUNDARY = "myboundary"

    def __init__(self, username: str = "admin", password: str = "dahua-pass",
                 basic: bool = False) -> None:
        super().__init__()
        self.guard = DigestGuard(username, password, basic=basic)
        self.silent = False
        """Connections stay open but nothing (not even heartbeats) is sent."""
        self.heartbeats = 0
        self.requests: list[str] = []
        """Every attach request's target exactly as it came on the request line (raw:
        ``codes=[All]`` and ``codes=%5BAll%5D`` are told apart)."""
        self.app.router.add_get("/cgi-bin/eventManager.cgi", self._attach)

    def event(self, code: str, action: str = "Start", index: int = 0,
              data: dict[str, Any] | None = None) -> bytes:
        text = f"Code={code};action={action};index={index}"
        if data is not None:
            text += ";data=" + json.dumps(data)
        body = part(text.encode() + b"\r\n", "text/plain", self.BOUNDARY)
        self.broadcast(body)
        return body

    def _heartbeat(self) -> bytes | None:
        if self.silent:
            return None
        self.heartbeats += 1
        return part(b"Heartbeat\r\n", "text/plain", self.BOUNDARY)

    async def _attach(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.raw_path)
        refused = self.guard.check(request)
        if refused is not None:
            return refused
        if request.query.get("action") != "attach" or "%5B" in request.raw_path.upper():
            # Older Dahua/Amcrest firmware reads codes=[All] literally and answers 400 to
            # the percent-encoded form (python-amcrest #155, home-assistant/core #33875).
            return web.Response(status=400, text="Error\r\nBad Request!\r\n")
        heartbeat = float(request.query.get("heartbeat", "0") or 0) or None
        return await self._serve_stream(
            request, f"multipart/x-mixed-replace; boundary={self.BOUNDARY}",
            self._heartbeat, heartbeat)
