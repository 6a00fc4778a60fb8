"""CJ/T 188 frames (2004 and 2018): ``[FE..] 68 T A0..A6 C L DATA CS 16``.

T is the meter type, the address is 7 BCD bytes lowest first, DATA starts with the DI
(2 bytes) and a sequence byte SER; no +0x33 offset. CS is the sum mod 256 from 68 to the
end of DATA. The control byte, like DL/T 645's: D7 reply, D6 abnormal, D5..D0 function.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.serialbus.framing import check_length_framed, checksum, scan_with

START = 0x68
END = 0x16
HEADER = 11  # 68 T A0..A6 C L
MAX_DATA = 128
WAKE_UP = b"\xfe\xfe\xfe"
WILDCARD = "AAAAAAAAAAAAAA"

DIRECTION_REPLY = 0x80
ABNORMAL = 0x40
FUNCTION = 0x3F

READ_DATA = 0x01
READ_ADDRESS = 0x03

METER_TYPES: dict[str, int] = {
    "cold_water": 0x10, "hot_water": 0x11, "drinking_water": 0x12, "reclaimed_water": 0x13,
    "heat": 0x20, "cooling": 0x21, "heat_cooling": 0x22, "gas": 0x30, "custom": 0x40,
}
BROADCAST_TYPE = 0xAA


class FrameError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Frame:
    meter_type: int
    address: str  # 14 digits as printed
    control: int
    data: bytes

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIRECTION_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def function(self) -> int:
        return self.control & FUNCTION


def address_bytes(address: str) -> bytes:
    text = address.strip().upper()
    if len(text) > 14 or not all(c in "0123456789A" for c in text):
        raise FrameError(f"address must be up to 14 digits, got {address!r}")
    return bytes.fromhex(text.rjust(14, "0"))[::-1]


def encode(meter_type: int, address: str, control: int, data: bytes, *,
           preamble: bytes = WAKE_UP) -> bytes:
    if len(data) > MAX_DATA:
        raise FrameError(f"data of {len(data)} bytes exceeds {MAX_DATA}")
    body = bytes([START, meter_type]) + address_bytes(address) + bytes([control, len(data)]) \
        + data
    return preamble + body + bytes([checksum(body), END])


def check(buf: bytes, start: int) -> int:
    return check_length_framed(buf, start, header=HEADER, length_at=10, max_data=MAX_DATA,
                               end=END)


scan = scan_with(START, check)


def decode(frame: bytes) -> Frame:
    if check(frame, 0) != len(frame):
        raise FrameError("not a complete CJ/T 188 frame")
    return Frame(frame[1], frame[2:9][::-1].hex().upper(), frame[9], frame[HEADER:-2])
