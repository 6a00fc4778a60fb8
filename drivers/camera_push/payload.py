"""What a post becomes, and how it is refused: the types shared by the receiver and the
profiles. Pure and synchronous (no aiohttp, no I/O), so profiles are easy to fuzz.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.reading import FieldValue, Reading


class Refused(Exception):
    """A post that is answered with an error status and never reaches the buffer.

    ``reason`` is a counter name (``bad_token``, ``invalid_json`` ...); ``detail`` says
    what was wrong for the log line, and never quotes a token."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status = status
        self.reason = reason
        self.detail = detail


def malformed(reason: str, detail: str = "") -> Refused:
    return Refused(400, reason, detail)


@dataclass(frozen=True)
class Image:
    """A picture that came with an event: counted and sized, optionally kept on disk."""

    name: str
    data: bytes


@dataclass
class Parsed:
    """One post, decoded. ``reading`` is None for a heartbeat or a poll: proof of life,
    nothing to store."""

    reading: Reading | None
    key: str | None = None
    """The device's own event id (deduplication of retried posts)."""
    plate: str | None = None
    """The raw plate, for the allow-list decision only (the reading's copy is
    pseudonymised by the pipeline)."""
    images: list[Image] = field(default_factory=list)
    kind: str = "event"
    """event, heartbeat or poll: chooses the answer."""
    more: list[Parsed] = field(default_factory=list)
    """Further events of the same post (a multipart body with two event parts), each
    with its own key; stored one after the other, the post answered after the last."""
    dropped: list[Refused] = field(default_factory=list)
    """Values refused one by one (a field of the wrong type, a tag too long ...): left out
    of the reading, which is stored; the receiver counts and logs each kind."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def media_type(content_type: str) -> str:
    """``multipart/form-data; boundary=x`` -> ``multipart/form-data``."""
    return content_type.split(";", 1)[0].strip().lower()


_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


def header_params(value: str) -> dict[str, str]:
    """``form-data; name="a"; filename=b.jpg`` -> {"name": "a", "filename": "b.jpg"}."""
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(value):
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(key.lower(), raw)
    return params


def clean_fields(fields: dict[str, FieldValue | None]) -> dict[str, FieldValue]:
    """Drop the fields a device left out (None) or sent empty."""
    return {k: v for k, v in fields.items() if v is not None and v != ""}
