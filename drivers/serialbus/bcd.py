"""BCD value formats of DL/T 645 and CJ/T 188 data, written the way the standards print them.

``XXXXXX.XX`` is eight BCD digits with two decimals (4 bytes, lowest byte first); a
leading ``-`` marks a signed value whose most significant bit is the sign
(``-XXX.XXX`` for phase current). Installers use the same strings for custom DIs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FORMAT = re.compile(r"^(-?)(X+)(?:\.(X+))?$")


class BadValue(ValueError):
    """Bytes that are not a value of the format (not BCD, too short)."""


@dataclass(frozen=True, slots=True)
class BcdFormat:
    signed: bool
    digits: int
    decimals: int

    @classmethod
    def parse(cls, text: str) -> BcdFormat:
        match = _FORMAT.match(text.strip().upper())
        if not match:
            raise ValueError(f"format must look like XXXXXX.XX or -XXX.XXX, got {text!r}")
        sign, whole, frac = match.group(1), match.group(2), match.group(3) or ""
        digits = len(whole) + len(frac)
        if digits > 16:
            raise ValueError(f"format {text!r} has more than 16 digits")
        return cls(bool(sign), digits, len(frac))

    @property
    def size(self) -> int:
        """Bytes on the wire; an odd digit count leaves the top nibble as padding (0)."""
        return (self.digits + 1) // 2

    def decode(self, raw: bytes) -> float | int:
        """``raw`` as received (offset removed), lowest byte first."""
        if len(raw) < self.size:
            raise BadValue(f"{len(raw)} bytes, the format needs {self.size}")
        msb_first = bytearray(raw[:self.size][::-1])
        negative = False
        if self.signed:
            negative = bool(msb_first[0] & 0x80)
            msb_first[0] &= 0x7F
        text = msb_first.hex()
        if not text.isdigit():
            raise BadValue("not BCD")
        number = int(text)
        if negative:
            number = -number
        return number / 10**self.decimals if self.decimals else number
