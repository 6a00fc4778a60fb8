"""Modbus TCP's own transport (client.py ``_TcpChannel``) against replies a real pymodbus
server never sends: garbage, stale transaction ids, other unit ids, split segments, a
connection closed mid-request. A scripted asyncio TCP server answers each request with
what the case says (beside the real pymodbus servers of test_modbus_tcp.py and the
end-to-end tests, which cover the well-behaved path)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from drivers.modbus.client import (
    Endpoint,
    ModbusConnectionError,
    ModbusExceptionReply,
    ModbusFrameError,
    ModbusLink,
    ModbusTimeout,
)

Reply = Callable[[int, int, bytes], list[bytes] | None]
"""(transaction id, unit, request PDU) -> chunks to send (None: close the connection)."""


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def registers(values: list[int]) -> bytes:
    """An FC 4 reply PDU."""
    return bytes([4, 2 * len(values)]) + struct.pack(f">{len(values)}H", *values)


@asynccontextmanager
async def scripted(reply: Reply) -> AsyncIterator[list[int]]:
    """A server on a free port answering by ``reply``; yields [port, connections]."""
    state = [0, 0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state[1] += 1
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                chunks = reply(tid, unit, pdu)
                if chunks is None:
                    break
                for chunk in chunks:
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.01)  # separate TCP segments
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state[0] = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def link(port: int, timeout: float = 0.3) -> ModbusLink:
    return ModbusLink(Endpoint("tcp", "127.0.0.1", port), timeout=timeout)


async def test_reply_split_across_segments_is_joined() -> None:
    def reply(tid: int, unit: int, pdu: bytes) -> list[bytes]:
        whole = frame(tid, unit, registers([1, 2, 3]))
        return [whole[:3], whole[3:9], whole[9:]]

    async with scripted(reply) as (port, _):
        bus = link(port)
        assert await bus.read("input", 0, 3, 7) == [1, 2, 3]
        await bus.close()


async def test_stale_reply_is_skipped_and_the_right_one_taken() -> None:
    """A late reply to an earlier request (other transaction id) is not ours: pymodbus
    skips such frames too."""
    def reply(tid: int, unit: int, pdu: bytes) -> list[bytes]:
        return [frame((tid - 1) or 0xFFFF, unit, registers([9])) + frame(tid, unit, registers([5]))]

    async with scripted(reply) as (port, _):
        bus = link(port)
        assert await bus.read("input", 0, 1, 1) == [5]
        assert await bus.read("input", 0, 1, 1) == [5]
        await bus.close()


@pytest.mark.parametrize(("answer", "error", "text"), [
    (lambda tid, unit: [b"\x00\x07garbage!"], ModbusFrameError, "bad frame, 10 bytes"),
    (lambda tid, unit: [frame(tid, unit + 1, registers([1]))], ModbusFrameError, "bad frame"),
    (lambda tid, unit: [], ModbusTimeout, "no reply"),
    (lambda tid, unit: [frame(tid, unit, b"\x84\x02")], ModbusExceptionReply,
     "exception 2 (illegal data address)"),
    (lambda tid, unit: [frame(tid, unit, b"\x63\x00")], ModbusFrameError, "bad frame, 9 bytes"),
    (lambda tid, unit: [frame(tid, unit, b"\x04")], ModbusFrameError, "bad frame, 8 bytes"),
    (lambda tid, unit: [frame(tid, unit, b"\x84")], ModbusFrameError, "bad frame, 8 bytes"),
    (lambda tid, unit: [frame(tid, unit, b"\x04\x09\x00")], ModbusFrameError, "bad frame"),
], ids=["garbage", "other-unit", "silent", "exception", "unknown-function", "truncated",
        "truncated-exception", "short-count"])
async def test_bad_replies_are_classified(
        answer: Callable[[int, int], list[bytes]], error: type[Exception], text: str) -> None:
    async with scripted(lambda tid, unit, pdu: answer(tid, unit)) as (port, _):
        bus = link(port)
        with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
            await bus.read("input", 0, 1, 3)
        await bus.close()


async def test_connection_closed_mid_request_then_reconnects() -> None:
    calls: list[int] = []

    def reply(tid: int, unit: int, pdu: bytes) -> list[bytes] | None:
        calls.append(tid)
        return None if len(calls) == 1 else [frame(tid, unit, registers([42]))]

    async with scripted(reply) as state:
        bus = link(state[0], timeout=30.0)  # the loss must end the wait, not the timeout
        with pytest.raises(ModbusConnectionError, match="connection lost"):
            await bus.read("input", 0, 1, 1)
        assert not bus.connected
        assert await bus.read("input", 0, 1, 1) == [42]
        assert state[1] == 2  # a new connection
        await bus.close()


async def test_writes_are_framed_as_pymodbus_frames_them() -> None:
    seen: list[bytes] = []

    def reply(tid: int, unit: int, pdu: bytes) -> list[bytes]:
        seen.append(pdu)
        return [frame(tid, unit, pdu[:5])]  # FC 5/15/16 replies echo address and count

    async with scripted(reply) as (port, _):
        bus = link(port)
        await bus.write("holding", 0x10, [1, 0xABCD], 2)
        await bus.write("coil", 3, [True], 2)
        await bus.write("coil", 8, [True, False, True], 2)
        await bus.close()
    assert seen == [bytes.fromhex("1000100002 04 0001abcd".replace(" ", "")),
                    bytes.fromhex("050003ff00"),
                    bytes.fromhex("0f00080003 01 05".replace(" ", ""))]


async def test_unreachable_endpoint_is_a_connection_error() -> None:
    async with scripted(lambda tid, unit, pdu: []) as (port, _):
        pass  # closed again: nothing listens on the port now
    bus = link(port)
    with pytest.raises(ModbusConnectionError, match="cannot connect"):
        await bus.read("input", 0, 1, 1)
    await bus.close()


async def test_each_request_times_out_at_its_own_deadline() -> None:
    """One watchdog timer per connection, moved on lazily: a short-timeout request after
    a long-timeout one must not wait for the long one's deadline, and a request whose
    deadline is later than the armed watchdog must not end when the watchdog fires."""
    answered: list[int] = []

    def reply(tid: int, unit: int, pdu: bytes) -> list[bytes]:
        if unit == 1:  # unit 1 answers, unit 2 is silent
            answered.append(tid)
            return [frame(tid, unit, registers([7]))]
        return []

    loop = asyncio.get_running_loop()
    async with scripted(reply) as (port, _):
        bus = link(port)
        assert await bus.read("input", 0, 1, 1, reply_timeout=60.0) == [7]  # arms at +60 s
        started = loop.time()
        with pytest.raises(ModbusTimeout):
            await bus.read("input", 0, 1, 2, reply_timeout=0.2)
        short = loop.time() - started
        assert short < 20.0, short  # not the first request's 60 s

        assert await bus.read("input", 0, 1, 1, reply_timeout=0.1) == [7]  # arms at +0.1 s
        started = loop.time()
        with pytest.raises(ModbusTimeout):
            await bus.read("input", 0, 1, 2, reply_timeout=0.6)
        long = loop.time() - started
        assert long >= 0.6, long  # the watchdog fired at ~0.1 s and waited on
        assert len(answered) == 2
        await bus.close()
