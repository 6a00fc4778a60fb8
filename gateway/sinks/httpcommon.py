"""What every HTTP sink shares that needs no HTTP client: answers to sink errors, TLS, auth.

Split from ``gateway.sinks.http`` (aiohttp's client) so a sink on another client, the
``influxdb`` sink on influxdb-client's synchronous urllib3 path, answers the forwarder
exactly as the aiohttp one does without importing aiohttp (~9 MiB on a Pi):

* ``status_error``: the table that maps an HTTP status to the project's sink errors, used
  for our own requests (``influxdb1``) and for influxdb-client's ``ApiException``
  (``influxdb``), so both sinks answer the forwarder the same way;
* ``transport_error``: any network failure (refused, reset, DNS, TLS, timeout) as
  ``SinkUnavailable``, the exception's text scrubbed of secrets;
* ``make_ssl_context`` and ``basic_auth_header``: the TLS and credential settings every
  HTTP sink offers;
* ``display_url``, ``error_text``, ``redact``: messages that name the endpoint, quote the
  server and never a secret.

Standard library only.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import ssl

from gateway.errors import (
    SinkAuthError,
    SinkError,
    SinkPartlyStored,
    SinkRejected,
    SinkTooLarge,
    SinkUnavailable,
)

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


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by case-insensitive name, from aiohttp's CIMultiDict, urllib3's
    HTTPHeaderDict or a plain dict."""
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


LINE_REFUSALS = re.compile(
    r"partial write|unable to parse|cannot parse|failed to parse|parsing failed|parse error"
    r"|field type conflict|beyond retention|line protocol|\bline \d+:|time outside range"
    r"|max-values-per-tag|max series per database|invalid (?:field|tag) format"
    r"|missing (?:fields?|tag)|bad timestamp|invalid (?:number|boolean)", re.IGNORECASE)
"""What stores say when they refuse *lines*: InfluxDB 1.x (``partial write: field type
conflict``, ``unable to parse``, ``points beyond retention policy``, ``max-values-per-tag
limit exceeded``), 2.x/3.x (``unable to parse``, ``partial write has occurred ... line 2:``,
``parsing failed for write_lp endpoint``), VictoriaMetrics (``cannot parse``). Matched as
phrases: single words matched inside others ("point" in "endpoint", "line" in
"deadline" and "MIME header line") made an outside probe's proxy answers drop every
line."""

ABOUT_THE_REQUEST = re.compile(r"header|https port|<html", re.IGNORECASE)
"""A 400 about the request itself, whatever else it says ("cannot parse request header",
nginx's "plain HTTP request was sent to HTTPS port" page)."""

NOT_A_LINE_PROBLEM = re.compile(
    r"endpoint|unsupported path|not found|no such|deadline|offline|disabled|not allowed"
    r"|permission|unauthori[sz]ed|forbidden|too large", re.IGNORECASE)
"""A 400 that names the request, the endpoint or the server's condition rather than its
lines (nginx's "plain HTTP request was sent to HTTPS port", "Request Header Fields Too
Large", "retention policy not found", "context deadline exceeded", VictoriaMetrics's
"unsupported path"), when it has none of ``LINE_REFUSALS``."""

LINE_WORDS = re.compile(r"\b(?:fields?|tags?|measurements?|timestamps?|series|points?)\b",
                        re.IGNORECASE)
"""Whole words that, in a 400 naming nothing of ``NOT_A_LINE_PROBLEM``, still speak of
lines (``invalid field value``, ``tag key too long``)."""

_DROPPED = re.compile(r"dropped=(\d+)")
_LINE_NUMBER = re.compile(r'\bline \d+:|"line_number"')


def is_line_refusal(text: str) -> bool:
    """Whether a 400/422's message refuses lines. Anything else (an empty answer, an HTML
    page, a proxy's or the server's own trouble) is a configuration problem that keeps
    the data buffered: a refusal of lines is bisected and the refused lines dropped."""
    if not text or text.lstrip().startswith("<") or ABOUT_THE_REQUEST.search(text):
        return False
    if LINE_REFUSALS.search(text):
        return True
    return not NOT_A_LINE_PROBLEM.search(text) and LINE_WORDS.search(text) is not None


def partly_stored(text: str) -> int | None:
    """Lines refused by an InfluxDB "partial write" answer (the store kept the others),
    or None for any other answer. InfluxDB 1.x and 2.x end the message with
    ``dropped=N``, which leaves out lines that did not parse (each named by ``unable to
    parse``); 3.x and Cloud list them as ``line N: ...`` or as ``"line_number"`` entries
    of the answer's ``data``. ``text`` is the whole answer, not the message alone."""
    lowered = text.lower()
    if "partial write" not in lowered:
        return None
    refused = (sum(int(n) for n in _DROPPED.findall(lowered))
               + lowered.count("unable to parse"))
    return max(1, refused or len(_LINE_NUMBER.findall(lowered)))


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
    message = redact(f"{where}: HTTP {status}" + (f": {text}" if text else ""), secrets)
    if error_type is SinkRejected:
        if not is_line_refusal(text):
            return SinkAuthError(message + " (not a refusal of lines: the data stays buffered)")
        whole = body.decode("utf-8", "replace") if isinstance(body, bytes) else body or ""
        refused = partly_stored(whole)
        if refused is not None:
            return SinkPartlyStored(message, refused)
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
    ``ssl`` is imported here, when a sink opens: importing the sink's module to validate
    a config must not load OpenSSL (gateway/openssl_gate.py).
    """
    import ssl

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


