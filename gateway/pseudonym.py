"""Keyed-hash pseudonyms for personal data (card numbers, licence plates).

HMAC-SHA256 with a per-site secret key: the same plate always maps to the same token,
so "how often did this car enter" still works centrally, but without the key nobody can
test guesses against the tokens (a plain hash of a plate is reversible by enumerating
all plates). The raw value is replaced before the reading reaches the buffer, the ops
bus or any sink, so it never leaves the process.

Every pseudonymised *field* also gets a numeric twin, ``<field>_key``: the token's first
12 hex digits as an integer (48 bits, exact in a float64). VictoriaMetrics keeps only
numeric fields, so without it a card or plate would reach it as nothing at all; with it
the central platform can find one pseudonym's passages there (``count_eq_over_time``) or
join on it after an export, without the pseudonym becoming a label (one series per card
would explode the series count). docs/schema.md, "Access events", has the contract.
"""

from __future__ import annotations

import hashlib
import hmac

KEY_SUFFIX = "_key"
KEY_HEX_DIGITS = 12
"""48 bits: exact in a float64 (VictoriaMetrics stores every value as one); two of 100,000
distinct cards share a key with probability about 2e-5."""


class Pseudonymizer:
    def __init__(self, key: bytes, length: int = 16) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonymisation key must be at least 16 bytes")
        self._key = key
        self._length = length

    def __call__(self, value: object) -> str:
        digest = hmac.new(self._key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[: self._length]


def pseudonym_key(token: str) -> int | None:
    """The numeric twin of a token (see the module docstring); None if it is not hex."""
    digits = token[:KEY_HEX_DIGITS]
    if not digits or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return int(digits, 16)
