"""URLs as they may be shown: passwords and token-like query values replaced by ``***``.

``iotgw check`` prints sink URLs and config errors quote values; both end up in
terminals, tickets and journald, so a URL never leaves the process with its secrets.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import AfterValidator, Field

MASK = "***"

SECRET_QUERY_KEYS = frozenset({
    "p", "password", "pass", "pwd", "token", "access_token", "auth", "authorization",
    "key", "apikey", "api_key", "secret", "signature", "sig",
})
"""Query parameters that carry credentials (InfluxDB 1.x takes ``u``/``p``, others
``token``, ``api_key``...); compared case-insensitively."""

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


_RAW_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(.*)@")
"""``scheme://user:password@`` up to the *last* ``@``: a password with an unencoded ``/``,
``#`` or ``?`` is not userinfo to urlsplit, yet it is still a password to hide."""


def check_sink_url(url: str) -> str:
    """A sink URL the sinks can use: refused at ``check`` instead of failing (or, with a
    path a store does not serve, dropping every line) at run time."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"not a usable URL ({exc})") from None
    if "@" in url.partition("://")[2] and "@" not in parts.netloc:
        raise ValueError("the password in the URL holds / # ? or @: write them percent-"
                         "encoded (%2F %23 %3F %40), or use username and password_file")
    try:
        port = parts.port
    except ValueError:  # its text may quote the userinfo: say only what is wrong
        raise ValueError("the port is not a number from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise ValueError("no query string or fragment: the sink adds its own "
                         "(credentials go in token/password settings)")
    if not parts.hostname:
        raise ValueError("no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1..65535")
    return url


def redact_url(url: str) -> str:
    """``url`` with any userinfo password and secret query values masked; the user name,
    host, path and other parameters stay, so the URL still says where it points."""
    raw = _RAW_USERINFO.match(url)
    if raw is not None and "@" not in urlsplit(url).netloc:
        return f"{raw.group(1)}:{MASK}@{url[raw.end():]}"
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:  # e.g. an unbalanced [ in the host: show nothing of it
        return MASK
    user, at, host = netloc.rpartition("@")
    if at:
        name, colon, _password = user.partition(":")
        netloc = f"{name}:{MASK}@{host}" if colon else f"{name}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS else v)
                               for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_QUOTED_URL = re.compile(r"""(['"])([A-Za-z][A-Za-z0-9+.-]*://[^'"]*)\1""")


def redact_text(text: str) -> str:
    """Every URL inside a message redacted (a config error quoting a bad URL, which may
    hold a space: quoted ones are taken whole)."""
    if "://" not in text:
        return text
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):  # the whole text is one (bad) URL
        return redact_url(text)
    text = _QUOTED_URL.sub(lambda m: m.group(1) + redact_url(m.group(2)) + m.group(1), text)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def userinfo(url: str) -> tuple[str, str | None] | None:
    """The ``user[:password]`` of a URL, percent-decoded, or None when it has none."""
    user, at, _host = urlsplit(url).netloc.rpartition("@")
    if not at:
        return None
    name, colon, password = user.partition(":")
    return unquote(name), (unquote(password) if colon else None)


def without_userinfo(url: str) -> str:
    """``url`` with its ``user:password@`` part removed (credentials go in a header)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


SinkUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$"),
                    AfterValidator(check_sink_url)]
"""The ``url`` of an HTTP sink: http(s), a host, an optional path, nothing more."""
