"""The two DL/T 645 dialects as data: control codes, DI width and error bits.

2007 and 1997 differ only in these constants; the driver and the CLI never branch on
the version, they look its :class:`Dialect` up.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.dlt645 import frame
from drivers.dlt645.points import POINTS_1997, POINTS_2007, Point


@dataclass(frozen=True)
class Dialect:
    name: str
    di_size: int
    read: int
    read_follow: int
    read_address: int | None
    follow_has_seq: bool
    """2007 follow-up requests and replies carry a frame sequence number after the data."""
    error_bits: tuple[tuple[int, str, str], ...]
    """(bit, counter kind, meaning) of the error byte of an abnormal reply."""
    points: dict[str, Point]

    def di_bytes(self, di: int) -> bytes:
        return di.to_bytes(self.di_size, "little")


_ERRORS_2007 = (
    (1, "no_data", "no such data (data identifier not supported)"),
    (2, "password", "wrong password or not authorised"),
    (3, "baud_rate", "baud rate cannot be changed"),
    (4, "year_zones", "too many year time zones"),
    (5, "day_slots", "too many daily time slots"),
    (6, "tariffs", "too many tariffs"),
    (0, "other", "other error"),
)
_ERRORS_1997 = (
    (1, "no_data", "data identifier error (no such data)"),
    (2, "password", "wrong password"),
    (4, "year_zones", "too many year time zones"),
    (5, "day_slots", "too many daily time slots"),
    (6, "tariffs", "too many tariffs"),
    (0, "other", "illegal data"),
)

DIALECTS: dict[str, Dialect] = {
    "2007": Dialect("2007", 4, 0x11, 0x12, 0x13, True, _ERRORS_2007, POINTS_2007),
    "1997": Dialect("1997", 2, 0x01, 0x02, None, False, _ERRORS_1997, POINTS_1997),
}

READ_ADDRESS_REPLY = 0x93
MAX_FOLLOW_UPS = 16


def explain_error(dialect: Dialect, data: bytes) -> tuple[str, str]:
    """(counter kind, readable reason) of an abnormal reply's error byte."""
    if not data:
        return "error_reply", "error reply without an error byte"
    code = data[0]
    reasons = [(kind, text) for bit, kind, text in dialect.error_bits if code & (1 << bit)]
    if not reasons:
        return "error_reply", f"error reply, code 0x{code:02X}"
    kind = reasons[0][0]
    return f"error_{kind}", "; ".join(text for _, text in reasons) + f" (0x{code:02X})"


def read_request(dialect: Dialect, address: str, di: int) -> bytes:
    return frame.encode(address, dialect.read, dialect.di_bytes(di))


def follow_request(dialect: Dialect, address: str, di: int, seq: int) -> bytes:
    data = dialect.di_bytes(di) + (bytes([seq & 0xFF]) if dialect.follow_has_seq else b"")
    return frame.encode(address, dialect.read_follow, data)


def read_address_request() -> bytes:
    return frame.encode(frame.WILDCARD, DIALECTS["2007"].read_address or 0x13)
