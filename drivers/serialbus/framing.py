"""Finding frames in a byte stream that may hold noise, partial or corrupt frames.

A scanner is a pure function from the buffered bytes to a :class:`Scan`: which complete
frame (if any) starts the stream after skipping noise, and how many bytes to drop. A
candidate whose checksum or end byte is wrong is rejected by dropping only its start byte,
so a real frame that begins inside the rejected bytes is still found (resynchronisation
on the next frame start).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scan:
    frame: bytes | None
    consumed: int
    junk: int = 0
    bad: int = 0


@dataclass(frozen=True, slots=True)
class Received:
    frame: bytes | None
    junk: int
    bad: int
    timed_out: bool


Scanner = Callable[[bytes], Scan]

Check = Callable[[bytes, int], int]
"""``check(buf, start)`` for a buffer with a start byte at ``start``: the frame length when
a complete valid frame starts there, NEED_MORE, NOT_A_FRAME (noise that happens to equal
the start byte) or CORRUPT (a complete frame with a bad checksum or end byte)."""

NEED_MORE = 0
NOT_A_FRAME = -1
CORRUPT = -2

PREAMBLE = 0xFE


def scan_with(start_byte: int, check: Check) -> Scanner:
    """A scanner for start-byte framed protocols (0x68 for DL/T 645 and CJ/T 188).

    When a candidate is still incomplete, a complete valid frame further on wins: a stray
    start byte in the noise must not hide the real reply behind it until the timeout."""

    def scan(buf: bytes) -> Scan:
        pos = 0
        bad = 0
        waiting_at = -1
        while True:
            start = buf.find(start_byte, pos)
            if start < 0:
                break
            verdict = check(buf, start)
            if verdict > 0:
                return Scan(buf[start:start + verdict], start + verdict,
                            junk=_noise(buf[:start]), bad=bad)
            if verdict == NEED_MORE:
                if waiting_at < 0:
                    waiting_at = start
            elif verdict == CORRUPT and waiting_at < 0:
                bad += 1
            pos = start + 1
        if waiting_at >= 0:
            return Scan(None, waiting_at, junk=_noise(buf[:waiting_at]), bad=bad)
        return Scan(None, len(buf), junk=_noise(buf), bad=bad)

    return scan


def check_length_framed(buf: bytes, start: int, *, header: int, length_at: int,
                        max_data: int, end: int) -> int:
    """``check`` for the ``68 ... L DATA CS 16`` family (DL/T 645, CJ/T 188): ``header``
    bytes up to and including L at ``length_at``, then L data bytes, the sum checksum
    from the first 68, and the end byte. Returns the frame length or a verdict."""
    have = len(buf) - start
    if have < header:
        return NEED_MORE
    length = buf[start + length_at]
    if length > max_data:
        return NOT_A_FRAME
    total = header + length + 2
    if have < total:
        return NEED_MORE
    if buf[start + total - 1] != end or buf[start + total - 2] != checksum(
            buf[start:start + total - 2]):
        return CORRUPT
    return total


def _noise(skipped: bytes) -> int:
    """Skipped bytes that are not the wake-up preamble (FE), which is expected."""
    return len(skipped) - skipped.count(PREAMBLE)


def checksum(data: bytes) -> int:
    """Sum modulo 256, the checksum of DL/T 645 and CJ/T 188."""
    return sum(data) & 0xFF
