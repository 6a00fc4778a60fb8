"""HTTP/RTSP Digest authentication parameters (RFC 7616, MD5), for the parts aiohttp does
not cover: the RTSP probe of camera_health (RTSP is not HTTP, so no HTTP client does its
auth) and the simulators' server side."""

from __future__ import annotations

import hashlib


def parse_auth_params(text: str) -> dict[str, str]:
    """``realm="a, b", nonce=x`` -> {realm: "a, b", nonce: x} (quoted values may hold
    commas; keys lower-cased)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip().strip(",").strip().lower()
        i = eq + 1
        if i < len(text) and text[i] == '"':
            end = text.find('"', i + 1)
            end = len(text) if end < 0 else end
            out[key] = text[i + 1:end]
            i = end + 1
        else:
            end = text.find(",", i)
            end = len(text) if end < 0 else end
            out[key] = text[i:end].strip()
            i = end
        if i < len(text) and text[i] == ",":
            i += 1
    return out


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # the digest scheme's own hash


def digest_response(username: str, password: str, method: str, uri: str,
                    params: dict[str, str], nc: str = "00000001", cnonce: str = "") -> str:
    """The ``response`` value for a challenge's ``params`` (qop=auth or none)."""
    ha1 = md5(f"{username}:{params.get('realm', '')}:{password}")
    ha2 = md5(f"{method}:{uri}")
    nonce = params.get("nonce", "")
    qop = params.get("qop", "")
    if "auth" in [q.strip() for q in qop.split(",")]:
        return md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return md5(f"{ha1}:{nonce}:{ha2}")
