"""The HTTP side of the push receiver: aiohttp's low-level server, the only module of the
driver that imports aiohttp, with the limits that keep one client from hurting others.

* Connections: at most ``max_connections`` open, ``max_connections_per_source`` from
  one address. At a limit the oldest connection that is not handling a request is
  closed to make room (``evicted_idle``); a newcomer is closed at once (counted) only
  when every slot is serving a request.
* Slow clients (slowloris): a connection that has not sent a complete request within
  ``header_timeout`` of opening (or of its previous answer) is closed by a sweeper; a
  body must arrive within ``read_timeout``. aiohttp itself has no header timeout, so
  every connection's protocol is wrapped by :class:`_Guard`, which tracks it.
* Bodies: a Content-Length over ``max_body`` is refused before anything is read (and
  before ``100 Continue``), a chunked body as soon as it passes the limit; compressed
  bodies are refused (no decompression bombs). Refused connections are closed, not
  drained.

No access log: the path carries the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from drivers.camera_push.payload import Answer, Refused
from gateway.config.models import HttpSection
from gateway.errors import DeviceError

log = logging.getLogger("iotgw.camera_push")
PUSH_PATH = re.compile(r"/push/([^/]{1,64})/([^/]{1,256})/?")
SWEEP_EVERY = 0.25


TOKEN_IN_TEXT = re.compile(r"(/push/[^/\s'\"]{1,64}/)[^/\s'\"]+")


def mask_tokens(text: str) -> str:
    """Any push path in ``text`` with its token replaced (parser errors quote the
    request line)."""
    return TOKEN_IN_TEXT.sub(r"\1***", text)


class _ParserLog(logging.Logger):
    """aiohttp logs a request its parser refuses (bad request line, bad chunking, huge
    headers) with a traceback, once per request: a fuzzer or a confused device would fill
    the disk. This logger counts them and logs each kind once (then a summary), with
    tokens masked. aiohttp has already answered such a request with 400."""

    def __init__(self, receiver: Any) -> None:
        super().__init__("iotgw.camera_push.http")
        self.receiver = receiver

    def _log(self, level: int, msg: object, args: Any, exc_info: Any = None,
             extra: Any = None, stack_info: bool = False, stacklevel: int = 1) -> None:
        if level < logging.WARNING:
            return
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        kind = type(exc).__name__ if exc is not None else "http_error"
        self.receiver.counters["bad_request"] += 1
        detail = mask_tokens(str(exc) if exc is not None else str(msg))
        self.receiver.problems.report(
            f"bad_request:{kind}", f"malformed HTTP request refused ({kind})",
            detail=" ".join(detail.split())[:160], level=logging.WARNING, summary_every=300.0)


class _Guard(asyncio.Protocol):
    """aiohttp's protocol for one connection, plus what the limits need to know."""

    def __init__(self, server: HttpServer, inner: RequestHandler) -> None:
        self.server = server
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.host = "?"
        self.busy = 0
        self.idle_since = time.monotonic()
        self.partial = False
        """Bytes came since the last answer but no request was handled yet."""
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if peer else "?"
        if not self.server.admit(self):
            transport.abort()
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.busy == 0:
            self.partial = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.inner.eof_received()
        return None  # aiohttp's protocol returns None too: close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.server.release(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class HttpServer:
    def __init__(self, receiver: Any, settings: HttpSection) -> None:
        from drivers.camera_push.receiver import PushReceiver

        assert isinstance(receiver, PushReceiver)
        self.receiver = receiver
        self.settings = settings
        self.port: int | None = None
        self._guards: dict[asyncio.Transport, _Guard] = {}
        self._per_host: dict[str, int] = {}
        self.buffered = 0
        """Body bytes held by posts being read or committed, all together."""

    # -- connections -------------------------------------------------------------------

    def admit(self, guard: _Guard) -> bool:
        """Admit a new connection. At a limit, the oldest connection of the same scope
        that is not handling a request (idle, or still dribbling its request: what a
        slowloris holds) is closed to make room; only when every slot is serving a
        request is the newcomer refused. Refusing the newcomer instead let a handful of
        slow LAN hosts lock every camera out until ``header_timeout``, again and again
        (found by the outside probe: 400 slow connections from 200 addresses, nine legit
        posts in twelve reset)."""
        s = self.settings
        for reason, full, scope in (
                ("source_connection_limit",
                 self._per_host.get(guard.host, 0) >= s.max_connections_per_source,
                 guard.host),
                ("connection_limit", len(self._guards) >= s.max_connections, None)):
            if full and not self._evict(scope):
                self.receiver.counters[reason] += 1
                self.receiver.problems.report(
                    f"{reason}:{guard.host}", f"connection from {guard.host} closed: too many "
                    f"open ({reason})", level=logging.WARNING, summary_every=300.0)
                return False
        assert guard.transport is not None
        self._guards[guard.transport] = guard
        self._per_host[guard.host] = self._per_host.get(guard.host, 0) + 1
        return True

    def _evict(self, host: str | None) -> bool:
        """Close the longest-waiting connection (of ``host``, or of anyone) that is not
        handling a request; False if there is none."""
        idle = [g for g in self._guards.values()
                if g.busy == 0 and g.transport is not None and (host is None or g.host == host)]
        if not idle:
            return False
        victim = min(idle, key=lambda g: g.idle_since)
        self.receiver.counters["evicted_idle"] += 1
        if victim.partial:
            self.receiver.counters["slow_client"] += 1
        assert victim.transport is not None
        victim.transport.abort()
        self.release(victim)
        return True

    def release(self, guard: _Guard) -> None:
        if guard.transport is not None and self._guards.pop(guard.transport, None) is not None:
            left = self._per_host.get(guard.host, 1) - 1
            if left > 0:
                self._per_host[guard.host] = left
            else:
                self._per_host.pop(guard.host, None)

    def _sweep(self) -> None:
        """Close connections that hold a slot without sending a request in time."""
        limit = time.monotonic() - self.settings.header_timeout
        for guard in list(self._guards.values()):
            if guard.busy == 0 and guard.idle_since < limit and guard.transport is not None:
                if guard.partial:
                    self.receiver.counters["slow_client"] += 1
                    self.receiver.problems.report(
                        f"slow_client:{guard.host}", f"connection from {guard.host} closed: no "
                        f"complete request within {self.settings.header_timeout:g}s",
                        level=logging.WARNING, summary_every=300.0)
                guard.transport.abort()
                self.release(guard)

    # -- serving -----------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        server = web.Server(self._handle, access_log=None, auto_decompress=False,
                            keepalive_timeout=s.header_timeout * 2 + 1, max_headers=64,
                            lingering_time=0, logger=_ParserLog(self.receiver))
        loop = asyncio.get_running_loop()
        try:
            listener = await loop.create_server(lambda: _Guard(self, server()), s.host, s.port,
                                                reuse_address=True, backlog=128)
        except OSError as exc:
            raise DeviceError(f"push receiver cannot listen on {s.listen}: {exc}") from exc
        sockets = list(listener.sockets or ())
        self.port = int(sockets[0].getsockname()[1]) if sockets else s.port
        host = f"[{s.host}]" if ":" in s.host else s.host
        url = f"http://{host}:{self.port}/push/<device>/<token>"
        log.info("push receiver on %s", url, extra={"push_url": f"http://{host}:{self.port}"})
        try:
            while True:
                await asyncio.sleep(SWEEP_EVERY)
                self._sweep()
        finally:
            listener.close()
            for transport in list(self._guards):
                transport.abort()
            with contextlib.suppress(Exception):
                await server.shutdown(1.0)
            self._guards.clear()
            self._per_host.clear()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        guard = self._guards.get(transport) if isinstance(transport, asyncio.Transport) else None
        if guard is not None:
            guard.busy += 1
            guard.partial = False
        try:
            return await self._respond(request)
        finally:
            if guard is not None:
                guard.busy -= 1
                guard.idle_since = time.monotonic()

    async def _respond(self, request: web.BaseRequest) -> web.StreamResponse:
        receiver = self.receiver
        peer = request.remote
        match = PUSH_PATH.fullmatch(request.path)
        if match is None:
            return self._refuse(Refused(404, "not_found", f"path {request.path[:40]!r}"), None,
                                peer)
        device_id, token = match.groups()
        endpoint = None
        body: bytes | None = None
        content_type = request.headers.get("Content-Type", "")
        try:
            endpoint = receiver.lookup(device_id)
            receiver.authorize(endpoint, token, peer)
            self._check_headers(request)
            body = await self._read_body(request)
            try:
                answer = await receiver.process(endpoint, content_type, body)
            finally:
                self.buffered -= len(body)
        except Refused as exc:
            return self._refuse(exc, endpoint, peer, body, content_type)
        except Exception as exc:  # a bug must cost one post, never the server
            receiver.counters["internal_error"] += 1
            receiver.problems.report(f"internal_error:{device_id[:64]}",
                                     f"push to {device_id[:64]!r} failed: "
                                     f"{type(exc).__name__}: {exc}", exc_info=exc)
            if endpoint is not None:
                endpoint.ctx.count("internal_error")
            return self._response(Answer(500, b"internal error\n", "text/plain"), close=True)
        return self._response(answer)

    def _check_headers(self, request: web.BaseRequest) -> None:
        if request.method != "POST":
            raise Refused(405, "method_not_allowed", f"method {request.method[:10]}")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise Refused(415, "content_encoding", f"Content-Encoding {encoding[:20]!r}")
        length = request.content_length
        if length is not None and length > self.settings.max_body:
            raise Refused(413, "too_large", f"Content-Length {length} > {self.settings.max_body}")

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        limit = self.settings.max_body
        chunks: list[bytes] = []
        total = 0
        complete = False
        try:
            async with asyncio.timeout(self.settings.read_timeout):
                while chunk := await request.content.readany():
                    total += len(chunk)
                    self.buffered += len(chunk)
                    if total > limit:
                        raise Refused(413, "too_large", f"body passed {limit} bytes")
                    if self.buffered > self.settings.max_buffered:
                        raise Refused(503, "server_busy", f"more than "
                                      f"{self.settings.max_buffered} body bytes held by posts")
                    chunks.append(chunk)
            complete = True
        except TimeoutError:
            raise Refused(408, "read_timeout", f"body not complete within "
                          f"{self.settings.read_timeout:g}s ({total} bytes)") from None
        except (Refused, asyncio.CancelledError):
            raise
        except Exception as exc:  # aiohttp's payload errors (bad chunking, a reset)
            raise Refused(400, "bad_body", f"{type(exc).__name__}: {str(exc)[:80]}") from None
        finally:
            if not complete:  # else the caller releases it once the post is answered
                self.buffered -= total
        return b"".join(chunks)

    def _refuse(self, exc: Refused, endpoint: Any, peer: str | None, body: bytes | None = None,
                content_type: str = "") -> web.StreamResponse:
        self.receiver.refused(exc, endpoint, peer, body, content_type)
        text = f"{exc.status} {exc.reason}\n".encode()
        # Close the connection: an unread body must not be drained or taken for the next
        # request; a refused client reconnects (and is refused again, cheaply).
        return self._response(Answer(exc.status, text, "text/plain"), close=True)

    @staticmethod
    def _response(answer: Answer, close: bool = False) -> web.Response:
        response = web.Response(status=answer.status, body=answer.body,
                                headers={"Content-Type": answer.content_type})
        if close:
            response.force_close()
        return response
