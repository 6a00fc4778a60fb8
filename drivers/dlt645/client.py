"""One DL/T 645 exchange on a shared line: request, the matching reply, follow-ups.

Used by the driver (inside a scheduler turn) and by the commissioning CLI. Every way a
reply can be wrong ends in :class:`ReadFailed` with a counter ``kind``; frames from
another meter or for another DI are counted and skipped while waiting, so a late reply
of a neighbour cannot be mistaken for ours.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.dlt645 import frame
from drivers.dlt645.protocol import (
    MAX_FOLLOW_UPS,
    READ_ADDRESS_REPLY,
    Dialect,
    explain_error,
    follow_request,
    read_address_request,
    read_request,
)
from drivers.serialbus.exchange import Count, exchange_frame, no_count
from drivers.serialbus.line import SerialLine
from drivers.serialbus.polling import ReadFailed


async def _exchange(line: SerialLine, request: bytes, accept: Callable[[frame.Frame], bool],
                    reply_timeout: float, count: Count) -> frame.Frame:
    return await exchange_frame(line, request, frame.scan, frame.decode, accept,
                                reply_timeout, count)


async def read_point(line: SerialLine, dialect: Dialect, address: str, di: int, *,
                     reply_timeout: float | None = None, count: Count = no_count
                     ) -> bytes:
    """The value bytes of ``di`` (DI stripped, follow-up frames joined), offset removed."""
    wait = line.timeout if reply_timeout is None else reply_timeout
    want = address.zfill(12)
    di_raw = dialect.di_bytes(di)

    def ours(function: int) -> Callable[[frame.Frame], bool]:
        def accept(reply: frame.Frame) -> bool:
            return (reply.is_reply and reply.address == want and reply.function == function
                    and (reply.is_error or reply.data[:dialect.di_size] == di_raw))
        return accept

    reply = await _exchange(line, read_request(dialect, want, di), ours(dialect.read),
                            wait, count)
    _raise_if_error(dialect, reply)
    value = reply.data[dialect.di_size:]
    seq = 0
    while reply.has_more:
        seq += 1
        if seq > MAX_FOLLOW_UPS:
            raise ReadFailed("follow_up", f"more than {MAX_FOLLOW_UPS} follow-up frames")
        reply = await _exchange(line, follow_request(dialect, want, di, seq),
                                ours(dialect.read_follow), wait, count)
        _raise_if_error(dialect, reply)
        part = reply.data[dialect.di_size:]
        value += part[:-1] if dialect.follow_has_seq and part else part
    return value


def _raise_if_error(dialect: Dialect, reply: frame.Frame) -> None:
    if reply.is_error:
        kind, reason = explain_error(dialect, reply.data)
        raise ReadFailed(kind, reason)


async def read_address(line: SerialLine, *, reply_timeout: float | None = None,
                       count: Count = no_count) -> str:
    """The address of the only meter on the line (0x13 to the wildcard address)."""
    wait = line.timeout if reply_timeout is None else reply_timeout

    def accept(reply: frame.Frame) -> bool:
        return reply.control == READ_ADDRESS_REPLY

    reply = await _exchange(line, read_address_request(), accept, wait, count)
    if len(reply.data) >= 6:
        return frame.address_text(reply.data[:6])
    return reply.address
