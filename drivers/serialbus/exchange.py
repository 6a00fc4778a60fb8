"""Request/reply on a shared serial line for frame-based meter protocols.

DL/T 645 and CJ/T 188 wait for their reply the same way: count noise and corrupt frames,
skip our own echoed request (half-duplex adapters) and replies of other meters, and give
up at the reply timeout with a reason the device state can show.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from drivers.serialbus.line import SerialLine
from drivers.serialbus.polling import ReadFailed

Count = Callable[[str, int], None]


class ReplyFrame(Protocol):
    @property
    def is_reply(self) -> bool: ...


F = TypeVar("F", bound=ReplyFrame)


def no_count(kind: str, n: int) -> None:
    return None


async def exchange_frame(line: SerialLine, request: bytes, scan: Callable,
                         decode: Callable[[bytes], F], accept: Callable[[F], bool],
                         reply_timeout: float, count: Count) -> F:
    """Send ``request``; the first decoded frame ``accept`` takes, skipping others."""
    deadline = time.monotonic() + reply_timeout
    received = await line.exchange(request, scan, reply_timeout)
    bad_seen = 0
    while True:
        if received.junk:
            count("noise_bytes", received.junk)
        if received.bad:
            count("bad_frame", received.bad)
            bad_seen += received.bad
        if received.frame is None:
            if bad_seen:
                raise ReadFailed("frame_error", "only corrupt replies (checksum or end byte)")
            raise ReadFailed("timeout", f"no reply within {reply_timeout:g}s")
        reply = decode(received.frame)
        if accept(reply):
            return reply
        # Our own request echoed by a half-duplex adapter, or a neighbour's late reply.
        count("foreign_reply" if reply.is_reply else "echo", 1)
        received = await line.port.receive(scan, deadline)
