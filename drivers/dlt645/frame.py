"""DL/T 645 frames (2007 and 1997 share the layout):

``[FE..] 68 A0..A5 68 C L DATA CS 16`` — address BCD, lowest byte first; every DATA byte
+0x33 on the wire; CS is the sum mod 256 from the first 68 through DATA.

The control byte is decoded by its bits rather than a list of codes: D7 reply direction,
D6 abnormal (error) reply, D5 follow-up frames exist, D4..D0 the function.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.serialbus.framing import NOT_A_FRAME, check_length_framed, checksum, scan_with

START = 0x68
END = 0x16
OFFSET = 0x33
HEADER = 10  # 68 A0..A5 68 C L
MAX_DATA = 200
WILDCARD = "AAAAAAAAAAAA"
BROADCAST = "999999999999"
WAKE_UP = b"\xfe\xfe\xfe\xfe"

DIRECTION_REPLY = 0x80
ABNORMAL = 0x40
FOLLOWS = 0x20
FUNCTION = 0x1F


class FrameError(ValueError):
    """A frame or address that cannot be encoded or decoded."""


@dataclass(frozen=True, slots=True)
class Frame:
    address: str  # 12 characters, most significant digit first, as printed on the meter
    control: int
    data: bytes  # with the 0x33 offset already removed

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIRECTION_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def has_more(self) -> bool:
        return bool(self.control & FOLLOWS)

    @property
    def function(self) -> int:
        return self.control & FUNCTION


def address_bytes(address: str) -> bytes:
    """``"123456789012"`` -> ``12 90 78 56 34 12`` (BCD, lowest byte first). ``A`` is
    allowed for the wildcard; short addresses are zero-padded on the left."""
    text = address.strip().upper()
    if len(text) > 12 or not all(c in "0123456789A" for c in text):
        raise FrameError(f"address must be up to 12 digits, got {address!r}")
    return bytes.fromhex(text.rjust(12, "0"))[::-1]


def address_text(raw: bytes) -> str:
    return raw[::-1].hex().upper()


def encode(address: str, control: int, data: bytes = b"", *, preamble: bytes = WAKE_UP
           ) -> bytes:
    if len(data) > MAX_DATA:
        raise FrameError(f"data of {len(data)} bytes exceeds {MAX_DATA}")
    body = (bytes([START]) + address_bytes(address) + bytes([START, control, len(data)])
            + bytes((b + OFFSET) & 0xFF for b in data))
    return preamble + body + bytes([checksum(body), END])


def check(buf: bytes, start: int) -> int:
    """Frame length if a valid frame starts at ``start`` (see serialbus.framing)."""
    if len(buf) - start > 7 and buf[start + 7] != START:  # the second 68
        return NOT_A_FRAME
    return check_length_framed(buf, start, header=HEADER, length_at=9, max_data=MAX_DATA,
                               end=END)


scan = scan_with(START, check)


def decode(frame: bytes) -> Frame:
    """A frame accepted by :func:`check` (no preamble) -> :class:`Frame`."""
    if check(frame, 0) != len(frame):
        raise FrameError("not a complete DL/T 645 frame")
    data = bytes((b - OFFSET) & 0xFF for b in frame[HEADER:-2])
    return Frame(address_text(frame[1:7]), frame[8], data)
