"""Keyed-hash pseudonyms for personal data (card numbers, licence plates).

HMAC-SHA256 with a per-site secret key: the same plate always maps to the same token,
so "how often did this car enter" still works centrally, but without the key nobody can
test guesses against the tokens (a plain hash of a plate is reversible by enumerating
all plates). The raw value is replaced before the reading reaches the buffer, the ops
bus or any sink, so it never leaves the process.
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymizer:
    def __init__(self, key: bytes, length: int = 16) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonymisation key must be at least 16 bytes")
        self._key = key
        self._length = length

    def __call__(self, value: object) -> str:
        digest = hmac.new(self._key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[: self._length]
