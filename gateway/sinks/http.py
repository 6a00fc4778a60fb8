"""aiohttp's client for the sinks: the only sink module that imports aiohttp.

(aiohttp's server side, ``aiohttp.web``, is used only by the health endpoint,
gateway/health/server.py: two roles of one package, each behind one module.)

``HttpSession``: one long-lived aiohttp session and a POST that returns
``(status, headers, body)`` and turns transport failures into ``SinkUnavailable``. Only
the ``influxdb1`` sink uses it; everything about answers, TLS and credentials that needs
no client lives in ``gateway.sinks.httpcommon``, so the ``influxdb`` sink (influxdb-client
over urllib3) shares it without loading aiohttp.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gateway.sinks.httpcommon import basic_auth_header, make_ssl_context, transport_error

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)
"""What a request raises when the network, not the server, failed."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


class HttpSession:
    """One long-lived aiohttp session (connection reuse, TLS set up once).

    Created in ``open()`` because aiohttp sessions belong to the running event loop.
    """

    def __init__(
        self,
        *,
        timeout: float,
        verify_ssl: bool = True,
        ca_file: Path | None = None,
        basic_auth: tuple[str, str] | None = None,
        where: str = "http",
        secrets: Iterable[str | None] = (),
    ) -> None:
        self._timeout = timeout
        self._verify_ssl = verify_ssl
        self._ca_file = ca_file
        self._basic_auth = basic_auth
        self._where = where
        self._secrets = tuple(secrets)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is not None:
            return
        context = make_ssl_context(self._verify_ssl, self._ca_file)
        headers = (
            {"Authorization": basic_auth_header(*self._basic_auth)} if self._basic_auth else None
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers=headers,
        )

    async def post(
        self,
        url: str,
        data: bytes,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """POST and read the whole answer; network trouble becomes SinkUnavailable."""
        if self._session is None:
            raise RuntimeError(f"{self._where}: post() before open()")
        try:
            async with self._session.post(url, data=data, params=params, headers=headers) as resp:
                body = await resp.read()
                return HttpResponse(resp.status, resp.headers, body)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, where=self._where, secrets=self._secrets) from exc

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
