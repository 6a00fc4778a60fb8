"""HTTP to cameras and access terminals: the only module that uses aiohttp's client for
devices (the sinks have their own, gateway/sinks/http.py, used by the influxdb1 sink).

Everything aiohttp raises is turned into the project's exceptions here
(drivers/event_stream/conditions.py on gateway/errors.py): 401/403 ->
``DeviceAuthError`` (not retryable-fast: a wrong password hammered every second locks the
account on many cameras), other statuses -> ``BadAnswer``, transport trouble ->
``Unreachable``. Credentials travel in the auth middleware only, never in a URL, so no
error message or log line can carry them.

Paths go on the request line as written, not re-encoded: Dahua's
``codes=[All]`` left as ``codes=%5BAll%5D`` (yarl's default) is answered 400 by older
Dahua/Amcrest firmware (python-amcrest #155, home-assistant/core #33875), and the Digest
``uri=`` (aiohttp takes the request's raw path) is then the same literal text.

Streams get no total timeout: aiohttp's default (300 s) tears a healthy event stream down
every five minutes, a known failure of other integrations. The caller reads with a
timeout per read instead (``StreamBody.read``), which is also how silence is detected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from drivers.event_stream.conditions import BadAnswer, Unreachable
from gateway import jsonsafe
from gateway.errors import DeviceAuthError, DeviceError

MAX_JSON_DEPTH = 32
"""Deepest JSON answer accepted (an AcsEvent page is 4 levels): its records go through
code that is not built for a value nested thousands deep."""
MAX_ANSWER = 4 * 1024 * 1024
"""Largest non-stream answer read (an AcsEvent page of 30 records is ~20 kB)."""
READ_CHUNK = 64 * 1024
STATUS_ERRORS: dict[int, tuple[type[DeviceError], str]] = {
    401: (DeviceAuthError, "credentials refused"),
    403: (DeviceAuthError, "credentials refused (forbidden)"),
    404: (BadAnswer, "wrong path, or not supported by this device"),
    **{status: (BadAnswer, "a redirect, not followed (check the host and port, or a proxy "
                "in between)") for status in (301, 302, 303, 307, 308)},
}
"""Statuses with a meaning of their own; any other non-2xx is ``BadAnswer``.

Redirects are never followed: a camera (or whatever answers on its address) that points
elsewhere would get our Digest answer or Basic password sent to a host nobody
configured, and its events taken for the camera's."""

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError, TimeoutError)


class NotJson(BadAnswer):
    """A 2xx answer whose body is not JSON we accept (malformed, or nested deeper than
    MAX_JSON_DEPTH: 100,000 ``[`` once escaped as RecursionError and killed the task)."""


def _status_error(status: int, what: str) -> DeviceError:
    kind, meaning = STATUS_ERRORS.get(status, (BadAnswer, "unexpected status"))
    return kind(f"{status} from {what}: {meaning}")


@dataclass
class StreamBody:
    """An open streaming response."""

    status: int
    content_type: str | None
    _response: aiohttp.ClientResponse
    what: str

    async def read(self, timeout: float) -> bytes | None:  # noqa: ASYNC109
        """The next bytes; ``b""`` when the device closed the stream; None when nothing
        came within ``timeout`` seconds (the connection stays open)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._response.content.readany()
        except TimeoutError:
            return None
        except aiohttp.ClientPayloadError as exc:
            raise Unreachable(f"{self.what}: stream broken: {exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{self.what}: {type(exc).__name__}: {exc}") from None


class DeviceHttp:
    """One device host (scheme://host:port) with its credentials and one session."""

    def __init__(self, base_url: str, *, auth: str = "digest", username: str | None = None,
                 password: str | None = None, connect_timeout: float = 5.0,
                 verify_tls: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        middlewares: tuple[aiohttp.DigestAuthMiddleware, ...] = ()
        headers: dict[str, str] = {}
        if auth == "digest" and username is not None:
            middlewares = (aiohttp.DigestAuthMiddleware(username, password or ""),)
        elif auth == "basic" and username is not None:
            # A header of our own: aiohttp deprecates BasicAuth/auth= for 4.0.
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        self._session = aiohttp.ClientSession(
            middlewares=middlewares, headers=headers,
            connector=aiohttp.TCPConnector(ssl=verify_tls, limit=8),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout,
                                          sock_connect=connect_timeout))

    async def close(self) -> None:
        await self._session.close()

    def _what(self, path: str) -> str:
        return f"{self.base_url}{path.split('?', 1)[0]}"

    def _url(self, path: str) -> URL:
        """``path`` exactly as the device documents it (``[``, ``]`` unencoded); one with
        a character that cannot stand on a request line (a space, non-ASCII) is encoded
        by yarl as before."""
        if all(0x21 <= ord(c) < 0x7F for c in path):
            return URL(self.base_url + path, encoded=True)
        return URL(self.base_url + path)

    @contextlib.asynccontextmanager
    async def stream(self, path: str) -> AsyncIterator[StreamBody]:
        """GET an endless response (event stream). The headers must come within the
        connect timeout; the body is read with ``StreamBody.read``'s own timeout."""
        what = self._what(path)
        try:
            async with asyncio.timeout(self.connect_timeout * 2):
                response = await self._session.get(
                    self._url(path), headers={"Accept": "multipart/x-mixed-replace, */*"},
                    allow_redirects=False)
        except TimeoutError:
            raise Unreachable(f"{what}: no answer within {self.connect_timeout * 2:g}s") \
                from None
        except TRANSPORT_ERRORS as exc:
            raise Unreachable(f"{what}: {type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise BadAnswer(f"{what}: {type(exc).__name__}: {exc}") from None
        try:
            if response.status != 200:
                raise _status_error(response.status, what)
            yield StreamBody(response.status, response.headers.get("Content-Type"),
                             response, what)
        finally:
            response.close()

    async def request(self, method: str, path: str, *, data: bytes | None = None,
                      content_type: str | None = None, timeout: float = 10.0,  # noqa: ASYNC109
                      ) -> bytes:
        """One request; the body of a 2xx answer (at most MAX_ANSWER bytes)."""
        what = self._what(path)
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            async with asyncio.timeout(timeout):
                async with self._session.request(method, self._url(path), data=data,
                                                 headers=headers, allow_redirects=False
                                                 ) as resp:
                    return await self._body(resp, what)
        except DeviceError:
            raise
        except TimeoutError:
            raise Unreachable(f"{what}: no answer within {timeout:g}s") from None
        except TRANSPORT_ERRORS as exc:
            raise Unreachable(f"{what}: {type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise BadAnswer(f"{what}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    async def _body(resp: aiohttp.ClientResponse, what: str) -> bytes:
        if not 200 <= resp.status < 300:
            raise _status_error(resp.status, what)
        body = bytearray()
        async for chunk in resp.content.iter_chunked(READ_CHUNK):
            body += chunk
            if len(body) > MAX_ANSWER:
                raise BadAnswer(f"{what}: answer larger than {MAX_ANSWER} bytes")
        return bytes(body)

    async def post_json(self, path: str, document: Any, timeout: float = 10.0  # noqa: ASYNC109
                        ) -> Any:
        body = await self.request("POST", path, data=json.dumps(document).encode(),
                                  content_type="application/json", timeout=timeout)
        try:
            return jsonsafe.parse(body, max_depth=MAX_JSON_DEPTH)
        except jsonsafe.JsonRefused as exc:
            raise NotJson(f"{self._what(path)}: answer is not JSON we accept: {exc}") \
                from None
