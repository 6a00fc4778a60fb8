"""URLs as they may be shown: passwords and token-like query values replaced by ``***``.

``iotgw check`` prints sink URLs and config errors quote values; both end up in
terminals, tickets and journald, so a URL never leaves the process with its secrets.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

SECRET_QUERY_KEYS = frozenset({
    "p", "password", "pass", "pwd", "token", "access_token", "auth", "authorization",
    "key", "apikey", "api_key", "secret", "signature", "sig",
})
"""Query parameters that carry credentials (InfluxDB 1.x takes ``u``/``p``, others
``token``, ``api_key``...); compared case-insensitively."""

_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_url(url: str) -> str:
    """``url`` with any userinfo password and secret query values masked; the user name,
    host, path and other parameters stay, so the URL still says where it points."""
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


def redact_text(text: str) -> str:
    """Every URL inside a message redacted (a config error quoting a bad URL)."""
    if "://" not in text:
        return text
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
