"""Simulated camera endpoints for health probes, on loopback: an RTSP server answering
OPTIONS and DESCRIBE (RFC 2326; Digest or Basic auth, 401 and 404 like real cameras)
and an ONVIF device service answering GetSystemDateAndTime from a skewed clock.

Both can be stopped and restarted on the same port (a camera rebooting); the RTSP one can
also accept connections and never answer (a hung firmware).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from datetime import UTC, datetime

from aiohttp import web

from drivers.event_stream.digest import digest_response, parse_auth_params

SDP = (b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Media Presentation\r\nc=IN IP4 0.0.0.0\r\n"
       b"t=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=control:trackID=1\r\n")


MISBEHAVIOURS = {
    "garbage": b"\x00\xff" * 5000,
    "hugeline": b"RTSP/1.0 200 OK" + b"A" * 100_000,
}
"""What a broken firmware or another service on the RTSP port answers, then closes."""


class RtspSim:
    def __init__(self, username: str | None = "admin", password: str = "cam-pass", *,
                 paths: tuple[str, ...] = ("/Streaming/Channels/101",),
                 scheme: str = "digest", options_auth: bool = False) -> None:
        self.username, self.password, self.paths, self.scheme = username, password, paths, scheme
        self.options_auth = options_auth
        """Credentials needed for OPTIONS too (some firmware)."""
        self.realm = "IP Camera(iotgw-sim)"
        self.authorizations: list[str] = []
        """Every Authorization header received (what a hostile server would learn)."""
        self.port = 0
        self.hang = False
        """Accept connections but never answer."""
        self.misbehave: str | None = None
        """Answer with bytes that are no RTSP, then close: ``garbage`` (binary without a
        line end), ``hugeline`` (a status line that never ends within 100 kB)."""
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self._nonces: set[str] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if self.hang:
                    await asyncio.sleep(3600)
                if self.misbehave is not None:
                    writer.write(MISBEHAVIOURS[self.misbehave])
                    await writer.drain()
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, url, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:] if line)}
                self.requests.append(method)
                if "authorization" in headers:
                    self.authorizations.append(headers["authorization"])
                writer.write(self._answer(method, url, headers))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _answer(self, method: str, url: str, headers: dict[str, str]) -> bytes:
        cseq = headers.get("cseq", "0")
        if method == "OPTIONS" and self.options_auth and self.username is not None and \
                not self._authorised(method, url, headers):
            return self._reply(401, "Unauthorized", cseq,
                               {"WWW-Authenticate": self._challenge()})
        if method == "OPTIONS":
            return self._reply(200, "OK", cseq, {"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, "
                                                            "TEARDOWN, GET_PARAMETER"})
        if method != "DESCRIBE":
            return self._reply(405, "Method Not Allowed", cseq)
        if self.username is not None and not self._authorised(method, url, headers):
            return self._reply(401, "Unauthorized", cseq,
                               {"WWW-Authenticate": self._challenge()})
        path = "/" + url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url
        if path not in self.paths:
            return self._reply(404, "Not Found", cseq)
        return self._reply(200, "OK", cseq, {"Content-Type": "application/sdp",
                                             "Content-Base": url + "/"}, SDP)

    def _challenge(self) -> str:
        if self.scheme == "basic":
            return f'Basic realm="{self.realm}"'
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        return f'Digest realm="{self.realm}", nonce="{nonce}", stale="FALSE"'

    def _authorised(self, method: str, url: str, headers: dict[str, str]) -> bool:
        header = headers.get("authorization", "")
        if self.scheme == "basic":
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return header == f"Basic {token}"
        if not header.startswith("Digest "):
            return False
        params = parse_auth_params(header[7:])
        if params.get("nonce") not in self._nonces or params.get("username") != self.username:
            return False
        expected = digest_response(self.username or "", self.password, method,
                                   params.get("uri", ""), {**params, "realm": self.realm},
                                   params.get("nc", ""), params.get("cnonce", ""))
        return params.get("response") == expected

    @staticmethod
    def _reply(status: int, reason: str, cseq: str, headers: dict[str, str] | None = None,
               body: bytes = b"") -> bytes:
        lines = [f"RTSP/1.0 {status} {reason}", f"CSeq: {cseq}", "Server: iotgw-sim"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class OnvifSim:
    """``POST /onvif/device_service`` -> GetSystemDateAndTimeResponse, clock + ``skew``."""

    def __init__(self, skew: float = 0.0) -> None:
        self.skew = skew
        self.port = 0
        self.requests = 0
        self.app = web.Application()
        self.app.router.add_post("/onvif/device_service", self._service)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)
        assert sockets
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _service(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if b"GetSystemDateAndTime" not in body:
            return web.Response(status=400, text="unsupported")
        now = datetime.fromtimestamp(time.time() + self.skew, UTC)
        xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"
 xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema">
<SOAP-ENV:Body><tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>
<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>
<tt:TimeZone><tt:TZ>CST-8</tt:TZ></tt:TimeZone>
<tt:UTCDateTime><tt:Time><tt:Hour>{now.hour}</tt:Hour><tt:Minute>{now.minute}</tt:Minute>
<tt:Second>{now.second}</tt:Second></tt:Time><tt:Date><tt:Year>{now.year}</tt:Year>
<tt:Month>{now.month}</tt:Month><tt:Day>{now.day}</tt:Day></tt:Date></tt:UTCDateTime>
</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></SOAP-ENV:Body>
</SOAP-ENV:Envelope>"""
        return web.Response(body=xml.encode(), content_type="application/soap+xml")
