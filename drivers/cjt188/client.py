"""CJ/T 188 exchanges on a shared line: read data (901F) and read address (810A)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from drivers.cjt188 import frame
from drivers.cjt188.data import DI_READ_ADDRESS, DI_READ_DATA, di_bytes, di_matches
from drivers.serialbus.exchange import Count, exchange_frame, no_count
from drivers.serialbus.line import SerialLine
from drivers.serialbus.polling import ReadFailed

_ser = itertools.count(1)


async def _exchange(line: SerialLine, request: bytes, accept: Callable[[frame.Frame], bool],
                    wait: float, count: Count) -> frame.Frame:
    reply = await exchange_frame(line, request, frame.scan, frame.decode, accept, wait, count)
    if reply.is_error:
        code = reply.data[3] if len(reply.data) > 3 else (reply.data[-1:] or b"\0")[0]
        raise ReadFailed("error_reply", f"error reply (status 0x{code:02X})")
    return reply


async def read_data(line: SerialLine, meter_type: int, address: str, *, order: str = "2004",
                    reply_timeout: float | None = None, count: Count = no_count
                    ) -> frame.Frame:
    """The 901F reply frame of one meter (data = DI, SER, body)."""
    want = address.zfill(14)
    ser = next(_ser) & 0xFF
    request = frame.encode(meter_type, want, frame.READ_DATA,
                           di_bytes(DI_READ_DATA, order) + bytes([ser]))

    def accept(reply: frame.Frame) -> bool:
        return (reply.is_reply and reply.address == want and reply.function == frame.READ_DATA
                and (reply.is_error or di_matches(reply.data[:2], DI_READ_DATA)))

    wait = line.timeout if reply_timeout is None else reply_timeout
    return await _exchange(line, request, accept, wait, count)


async def read_address(line: SerialLine, meter_type: int, *, order: str = "2004",
                       reply_timeout: float | None = None, count: Count = no_count) -> str:
    """Address of the only meter on the line (read address to the wildcard)."""
    request = frame.encode(meter_type, frame.WILDCARD, frame.READ_ADDRESS,
                           di_bytes(DI_READ_ADDRESS, order) + bytes([next(_ser) & 0xFF]))

    def accept(reply: frame.Frame) -> bool:
        return reply.is_reply and reply.function == frame.READ_ADDRESS

    wait = line.timeout if reply_timeout is None else reply_timeout
    return (await _exchange(line, request, accept, wait, count)).address
