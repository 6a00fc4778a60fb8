"""HTTP plumbing shared by the InfluxDB sinks: the only module that uses aiohttp's client.

(aiohttp's server side, ``aiohttp.web``, is used only by the health endpoint,
gateway/health/server.py: two roles of one package, each behind one module.)

Two things live here so they exist exactly once:

* ``HttpSession``: one long-lived aiohttp session and a POST that returns
  ``(status, headers, body)`` and turns transport failures into ``SinkUnavailable``;
* ``status_error``: the table that maps an HTTP status to the project's sink errors, used
  both for our own requests (``influxdb1``) and for influxdb-client's ``ApiException``
  (``influxdb``), so both sinks answer the forwarder the same way.
"""

from __future__ import annotations

import base64
import json
import math
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from gateway.errors import (
    SinkAuthError,
    SinkError,
    SinkRejected,
    SinkTooLarge,
    SinkUnavailable,
)

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)
"""What a request raises when the network, not the server, failed.

Exported so ``influxdb.py`` can catch aiohttp errors raised inside influxdb-client
without importing aiohttp itself.
"""

STATUS_ERRORS: dict[int, type[SinkError]] = {
    400: SinkRejected,
    422: SinkRejected,
    401: SinkAuthError,
    403: SinkAuthError,
    404: SinkAuthError,
    413: SinkTooLarge,
    429: SinkUnavailable,
}
"""Non-2xx statuses with a specific meaning; everything else (5xx, odd codes) is
``SinkUnavailable`` so an unknown answer never loses data, it only delays it."""

ERROR_TEXT_LIMIT = 500
"""Enough of the server's message to name the bad line, short enough for a log line."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by case-insensitive name, from aiohttp's CIMultiDict or a plain dict."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), else None.

    Dates in the past give 0 (retry now); garbage gives None so the forwarder falls back
    to its own backoff instead of trusting a nonsense hint.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; HTTP-dates are always GMT
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def error_text(body: bytes | str | None, limit: int = ERROR_TEXT_LIMIT) -> str:
    """The server's explanation, truncated.

    InfluxDB 1.x answers ``{"error": ...}``, 2.x/3.x ``{"code":..., "message": ...}``,
    VictoriaMetrics plain text: take the message out of the JSON when there is one.
    """
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    text = text.strip()
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        message = parsed.get("message") or parsed.get("error")
        if isinstance(message, str) and message:
            text = message.strip()
    if len(text) > limit:
        text = text[:limit] + "…"
    return text


def display_url(url: str) -> str:
    """The URL for messages: any ``user:password@`` part removed, trailing slash dropped."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


MIN_SECRET_LENGTH = 6
"""Shorter "secrets" are not scrubbed from messages: replacing every ``t`` of a message
for a token ``t`` made it unreadable and, by where the stars fell, gave the token away.
Real tokens and passwords are longer; a short one is no secret anyway."""


def redact(message: str, secrets: Iterable[str | None]) -> str:
    """Replace secrets in a message: servers sometimes echo what they were sent."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            message = message.replace(secret, "***")
    return message


NOT_A_LINE_PROBLEM = ("unsupported path", "page not found", "no such endpoint")
"""A 400 whose text says the *endpoint* is wrong (VictoriaMetrics answers a URL with an
extra path this way): not a refusal of lines, which would drop every one of them, but a
configuration problem that keeps them buffered (like 404)."""


def status_error(
    status: int,
    headers: Mapping[str, str] | None,
    body: bytes | str | None,
    *,
    where: str,
    secrets: Iterable[str | None] = (),
) -> SinkError | None:
    """The sink error for an HTTP answer, or None for 2xx (stored).

    ``where`` names the endpoint for the message (the forwarder adds the sink's name);
    ``secrets`` are scrubbed from it. Retry-After is honoured on every ``SinkUnavailable``
    (429 and 503 in practice).
    """
    if 200 <= status <= 299:
        return None
    error_type = STATUS_ERRORS.get(status, SinkUnavailable)
    text = error_text(body)
    if error_type is SinkRejected and any(p in text.lower() for p in NOT_A_LINE_PROBLEM):
        error_type = SinkAuthError
    message = redact(f"{where}: HTTP {status}" + (f": {text}" if text else ""), secrets)
    if error_type is SinkUnavailable:
        retry_after = parse_retry_after(header(headers, "Retry-After"))
        return SinkUnavailable(message, retry_after=retry_after)
    return error_type(message)


def transport_error(
    exc: BaseException, *, where: str, secrets: Iterable[str | None] = ()
) -> SinkUnavailable:
    """SinkUnavailable for a network failure (refused, reset, DNS, TLS, timeout)."""
    detail = str(exc).strip()
    kind = type(exc).__name__
    message = f"{where}: {kind}: {detail}" if detail else f"{where}: {kind}"
    return SinkUnavailable(redact(message, secrets))


def make_ssl_context(verify_ssl: bool, ca_file: Path | None) -> ssl.SSLContext:
    """The TLS settings every HTTP sink offers: a private CA and, for labs, no checking.

    Raises SinkAuthError when the CA file is unusable: retrying soon cannot fix it, an
    installer has to, so the sink should be marked failed rather than hammered.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise SinkAuthError(f"cannot load ca_file {ca_file}: {exc}") from exc
    if not verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def basic_auth_header(username: str, password: str) -> str:
    """RFC 7617 Basic credentials (UTF-8), built here because aiohttp 3.14 deprecates
    ``BasicAuth`` and its replacement does not exist in the older 3.x we allow."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


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
