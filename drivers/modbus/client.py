"""The only module of the driver that imports pymodbus (pinned >=3.11,<3.12).

The gateway's client side (the simulated devices of the tests and the demo, pymodbus's
server side, are in drivers/modbus/sim.py, which the driver never imports). It turns
pymodbus's behaviour into the project's terms:

* exception replies come back from pymodbus as PDUs with ``isError()``; here they raise
  :class:`ModbusExceptionReply` with the code;
* a silent device, a CRC error, garbage, or a reply from another unit id all look the
  same to pymodbus (it drops bad frames and waits until the timeout); we watch the raw
  bytes received (``trace_packet``) to tell them apart: nothing received is a
  :class:`ModbusTimeout`, bytes that never formed our frame are a :class:`ModbusFrameError`;
* pymodbus turns a ``CancelledError`` during a request into ``ModbusIOException``; we
  turn it back, or a gateway shutdown would be swallowed as a "timeout";
* pymodbus closes the connection after ``retries + 3`` unanswered requests; on a shared
  RS-485 line that would cut off every healthy meter because one is dead, so it is
  disabled, and retries are done by the driver, one scheduled turn at a time;
* Modbus TCP does not go through pymodbus's client at all but through :class:`_TcpChannel`:
  an asyncio protocol that frames with pymodbus's ``FramerSocket`` and decodes with its
  PDU classes. The high-level client's transaction layer (a lock, a future and
  ``wait_for`` per request, eager debug formatting, packet tracing) was about 2/3 of the
  gateway's CPU per request, and importing ``pymodbus.client`` (every client, pyserial)
  ~1.7 MiB of a TCP-only gateway's memory (docs/benchmarks.md). RTU, on a serial port or
  tunnelled over TCP, keeps pymodbus's client, imported when such a bus is used;
* timeouts are per request (per device), not per client;
* the RTU silence between frames (3.5 characters) is kept here, counted from the last
  byte received (or the end of our own request when nothing came back), not from when
  the caller finished with the reply: see :meth:`ModbusLink.quiet`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerSocket, FramerType
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    WriteMultipleRegistersRequest,
)

from gateway.errors import DeviceError

# pymodbus logs every timeout at ERROR; our drivers log a failure once and count repeats.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

Transport = Literal["tcp", "rtu", "rtu_over_tcp"]

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(DeviceError):
    """Base of Modbus device errors; ``kind`` is the per-device counter name."""

    kind = "modbus_error"


class ModbusTimeout(ModbusError):
    kind = "timeout"


class ModbusFrameError(ModbusError):
    """Bytes came back but no valid reply for us: CRC error, garbage, wrong unit id."""

    kind = "frame_error"


class ModbusWrongUnit(ModbusFrameError):
    kind = "wrong_unit"


class ModbusWrongLength(ModbusFrameError):
    """A valid reply with another number of registers (or bits) than asked for."""

    kind = "wrong_length"


class ModbusConnectionError(ModbusError):
    kind = "no_connection"


class ModbusExceptionReply(ModbusError):
    """The device answered with a Modbus exception."""

    kind = "exception_reply"

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"{what}: exception {code} ({name})")

    @property
    def address_problem(self) -> bool:
        """Codes that mean "not this range" rather than "not now": split the read."""
        return self.code in (1, 2, 3)


@dataclass(frozen=True)
class Endpoint:
    """Where a bus is and how frames go over it."""

    transport: Transport
    target: str
    """serial device path, or host"""
    port: int = 502
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    @classmethod
    def from_bus(cls, bus: Any) -> Endpoint:
        """From a validated ``SerialBus`` or ``TcpBus``: ``socket://`` ports are RTU over TCP."""
        if bus.type == "tcp":
            return cls("tcp", bus.host, bus.port)
        if bus.port.startswith("socket://"):
            url = urlsplit(bus.port)
            return cls("rtu_over_tcp", url.hostname or "127.0.0.1", url.port or 502,
                       bus.baudrate, bus.bytesize, bus.parity, bus.stopbits)
        return cls("rtu", bus.port, 0, bus.baudrate, bus.bytesize, bus.parity, bus.stopbits)

    def char_time(self) -> float:
        """Seconds per character on the wire (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate

    def default_gap(self) -> float:
        """The RTU 3.5-character silence (fixed 1.75 ms above 19200 baud); 0 for TCP."""
        if self.transport == "tcp":
            return 0.0
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time()


@functools.cache
def _registers(count: int) -> struct.Struct:
    return struct.Struct(f">{count}H")


def _decode_registers(pdu: Any, data: bytes) -> None:
    """pymodbus's register reply decode with one ``struct`` call instead of one per
    register (a 74-register read was ~40% of pymodbus's CPU per request); same checks."""
    size = data[0]
    if size >= len(data):
        raise ModbusIOException(f"byte_count {size} > length of packet {len(data)}")
    pdu.registers = list(_registers(size // 2).unpack_from(data, 1))


class _HoldingReply(ReadHoldingRegistersResponse):
    decode = _decode_registers


class _InputReply(ReadInputRegistersResponse):
    decode = _decode_registers


_FAST_RESPONSES = (_HoldingReply, _InputReply)

_READS: dict[str, type[ModbusPDU]] = {
    "coil": ReadCoilsRequest, "discrete": ReadDiscreteInputsRequest,
    "holding": ReadHoldingRegistersRequest, "input": ReadInputRegistersRequest,
}
"""Request PDU per table (FC 1-4), as pymodbus's ``read_*`` client methods build them."""


def _no_reply(waiter: asyncio.Future[ModbusPDU | None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _TcpChannel(asyncio.Protocol):
    """One Modbus TCP connection, one transaction at a time (the bus scheduler's turn).

    Frames are built and split by pymodbus's ``FramerSocket``; a reply is the frame whose
    unit id and transaction id match the request (others, e.g. a late reply to a request
    that timed out, are skipped as pymodbus skips them); register replies decode through
    the fast response classes, anything else through pymodbus's ``DecodePDU``. No reply
    within the timeout, or the connection lost meanwhile, resolves to ``None``; what was
    received meanwhile went to ``trace``, for the caller to classify.

    The reply timeout is one watchdog timer per connection, moved on lazily, not a timer
    per request: a poll cycle of 100 meters armed and cancelled 100 timers a second, and
    each cost a push into and a pop out of the event loop's heap (Python-level
    comparisons), ~6% of the instructions per poll. The watchdog fires at the latest
    deadline it knows of, checks the current request's and re-arms for it if that is
    later; while requests come back to back it fires about once per timeout period."""

    def __init__(self, trace: Callable[[bool, bytes], bytes]) -> None:
        self._trace = trace
        decoder = DecodePDU(is_server=False)
        for response in _FAST_RESPONSES:
            decoder.register(response)
        self._decoder = decoder
        self._framer = FramerSocket(decoder)
        self._fast = {r.function_code: r for r in _FAST_RESPONSES}
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[ModbusPDU | None] | None = None
        self._unit = self._tid = 0
        self._buffer = b""
        self._deadline = 0.0
        """When the current request's reply is due at the latest (loop time)."""
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def connect(self, host: str, port: int, within: float) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            await loop.create_connection(lambda: self, host, port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP stream
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._waiter is not None:
            _no_reply(self._waiter)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def execute(self, request: ModbusPDU, reply_timeout: float) -> ModbusPDU | None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionException("not connected")
        self._tid = self._tid % 0xFFFF + 1  # 1..65535: 0 would match any reply
        request.transaction_id = self._tid
        self._unit = request.dev_id
        self._buffer = b""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        transport.write(self._trace(True, self._framer.buildFrame(request)))
        deadline = self._deadline = loop.time() + reply_timeout
        watchdog = self._watchdog
        if watchdog is None or watchdog.when() > deadline:  # none, or too late for this one
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = loop.call_at(deadline, self._expire)
        try:
            return await waiter
        finally:
            self._waiter = None

    def _expire(self) -> None:
        """The watchdog: end the current request if its deadline has passed, else wait
        for that deadline; with no request in flight it disarms."""
        self._watchdog = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = waiter.get_loop()
        if loop.time() >= self._deadline:
            _no_reply(waiter)
        else:
            self._watchdog = loop.call_at(self._deadline, self._expire)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody asked: a reply after its timeout
        # What came since the request, whole: the caller's evidence if no reply comes.
        buffer = self._buffer = self._trace(False, self._buffer + data)
        framer = self._framer
        while buffer:
            used, unit, tid, pdu_bytes = framer.decode(buffer)
            if not used:
                break  # wait for the rest of the frame
            buffer = self._buffer = buffer[used:]
            if not pdu_bytes or unit != self._unit or (tid and tid != self._tid):
                continue  # empty, or not ours (pymodbus's handleFrame skips these too)
            try:
                pdu = self._decode(pdu_bytes)
            except (ModbusException, ValueError, IndexError, struct.error) as exc:
                # What pymodbus's decoder turns into "Unable to decode" (a truncated PDU
                # raises IndexError): a bad frame, not a crash of this protocol.
                waiter.set_exception(ModbusIOException(f"Unable to decode response: {exc}"))
                return
            pdu.dev_id, pdu.transaction_id = unit, tid
            self._buffer = b""
            waiter.set_result(pdu)
            return

    def _decode(self, frame: bytes) -> ModbusPDU:
        function_code = frame[0]
        fast = self._fast.get(function_code)
        if fast is not None:
            pdu: ModbusPDU = fast()
            pdu.decode(frame[1:])
            return pdu
        if function_code > 0x80:
            pdu = ExceptionResponse(function_code & 0x7F)
            pdu.decode(frame[1:])
            return pdu
        decoded = self._decoder.decode(frame)
        if decoded is None:
            raise ModbusIOException("Unable to decode response")
        return decoded


class ModbusLink:
    """One bus: a :class:`_TcpChannel` for Modbus TCP, pymodbus's async client for RTU.
    Callers serialize use (BusScheduler).

    ``silence``: the quiet time kept before each request (default: the endpoint's
    3.5-character gap on RTU, none on TCP)."""

    def __init__(self, endpoint: Endpoint, timeout: float = 1.0,
                 silence: float | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.silence = endpoint.default_gap() if silence is None else max(0.0, silence)
        self.requests = 0
        self.silence_waits = 0
        """Requests that had to wait for the line to be quiet long enough."""
        self._rx = b""
        self._quiet_since = -math.inf
        self._tcp: _TcpChannel | None = None
        self._client: Any = None
        if endpoint.transport == "tcp":
            self._tcp = _TcpChannel(self._trace)
        else:
            self._client = self._make_client(endpoint, timeout)
            self._client.set_max_no_responses(1 << 30)
            for response in _FAST_RESPONSES:
                self._client.register(response)

    def _make_client(self, ep: Endpoint, timeout: float) -> Any:
        """pymodbus's client, for RTU (serial, or tunnelled over TCP)."""
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        common: dict[str, Any] = dict(timeout=timeout, retries=0, reconnect_delay=0.5,
                                      reconnect_delay_max=10.0, trace_packet=self._trace)
        if ep.transport == "rtu":
            return AsyncModbusSerialClient(ep.target, framer=FramerType.RTU, baudrate=ep.baudrate,
                                           bytesize=ep.bytesize, parity=ep.parity,
                                           stopbits=ep.stopbits, **common)
        framer = FramerType.SOCKET if ep.transport == "tcp" else FramerType.RTU
        return AsyncModbusTcpClient(ep.target, port=ep.port, framer=framer, **common)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        now = time.monotonic()
        if sending:
            self._rx = b""
            self.requests += 1
            # The request leaves the UART within its own transmission time: if no reply
            # comes (timeout), the line has been quiet since then.
            self._quiet_since = now + len(data) * self.endpoint.char_time() * (
                self.endpoint.transport != "tcp")
        else:
            self._rx = data  # pymodbus hands us its whole receive buffer so far
            self._quiet_since = now
        return data

    async def quiet(self) -> None:
        """Wait until the line has been silent for ``silence`` seconds.

        Counted from the last received byte as pymodbus saw it, which is as close to the
        wire as this process gets; the time the caller then spends decoding, emitting
        and handing the bus to the next device overlaps the silence instead of adding
        to it (what a 9600-baud line with small frames cannot afford: see
        docs/modbus.md, RTU benchmark)."""
        if self.silence <= 0:
            return
        wait = self._quiet_since + self.silence - time.monotonic()
        if wait > 0:
            self.silence_waits += 1
            await asyncio.sleep(wait)

    @property
    def connected(self) -> bool:
        if self._tcp is not None:
            return self._tcp.connected
        return bool(self._client.connected)

    async def connect(self) -> None:
        if self.connected:
            return
        if self._tcp is not None:
            try:
                await self._tcp.connect(self.endpoint.target, self.endpoint.port, self.timeout)
            except (OSError, TimeoutError) as exc:
                raise ModbusConnectionError(
                    f"cannot connect to {self.describe()}: {exc or 'timed out'}") from None
            return
        try:
            ok = await self._client.connect()
        except (ModbusException, OSError) as exc:
            raise ModbusConnectionError(f"cannot connect to {self.describe()}: {exc}") from None
        if not ok:
            raise ModbusConnectionError(f"cannot connect to {self.describe()}")

    async def diagnose(self) -> str:
        """Why the last connect failed, in words (pymodbus only says it did not work)."""
        ep = self.endpoint
        if ep.transport == "rtu":
            return _serial_problem(ep.target)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ep.target, ep.port),
                                               self.timeout)
        except (OSError, TimeoutError) as exc:
            return f"cannot connect to {self.describe()}: {exc or 'timed out'}"
        writer.close()
        return f"cannot connect to {self.describe()} (it accepts TCP connections now: retry)"

    def describe(self) -> str:
        ep = self.endpoint
        return ep.target if ep.transport == "rtu" else f"{ep.target}:{ep.port}"

    async def read(self, table: str, address: int, count: int, unit: int,
                   reply_timeout: float | None = None) -> list[int] | list[bool]:
        """``count`` registers (ints) or bits (bools) from ``address``."""
        what = f"read {table}[{address}..{address + count - 1}] unit {unit}"
        reply = await self._call(what, unit, reply_timeout,
                                 _READS[table](address=address, count=count, dev_id=unit))
        values = list(reply.bits[:count]) if table in ("coil", "discrete") else (
            reply.registers)
        if len(values) != count:
            raise ModbusWrongLength(f"{what}: the reply holds {len(values)} values")
        return values

    async def write(self, table: str, address: int, values: Sequence[int] | Sequence[bool],
                    unit: int, reply_timeout: float | None = None) -> None:
        """Write coils (FC 5/15) or holding registers (FC 6/16)."""
        what = f"write {table}[{address}..{address + len(values) - 1}] unit {unit}"
        request: ModbusPDU
        if table == "coil":
            bits = [bool(v) for v in values]
            request = (WriteSingleCoilRequest(address=address, bits=bits, dev_id=unit)
                       if len(bits) == 1 else
                       WriteMultipleCoilsRequest(address=address, bits=bits, dev_id=unit))
        elif table == "holding":
            # FC 16 even for one register: FC 6 is not implemented by every meter,
            # FC 16 is by all that accept writes at all.
            request = WriteMultipleRegistersRequest(
                address=address, registers=[int(v) for v in values], dev_id=unit)
        else:
            raise ValueError(f"{table} is read-only")
        await self._call(what, unit, reply_timeout, request)

    async def _call(self, what: str, unit: int, reply_timeout: float | None,
                    request: ModbusPDU) -> Any:
        await self.connect()
        await self.quiet()
        timeout = reply_timeout or self.timeout
        try:
            if self._tcp is not None:
                reply = await self._tcp.execute(request, timeout)
                if reply is None:  # what pymodbus reports as ModbusIOException, below
                    raise ModbusIOException("no reply")
            else:
                self._client.ctx.comm_params.timeout_connect = timeout
                reply = await self._client.execute(False, request)
        except ModbusIOException as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            raise self._silence_error(what, unit, exc) from None
        except ConnectionException as exc:
            raise ModbusConnectionError(f"{what}: {exc}") from None
        except ModbusException as exc:
            raise ModbusFrameError(f"{what}: {exc}") from None
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's wait_for (inside pymodbus) returns a reply that arrived in the
            # same loop step as a cancellation and drops the cancellation: a device task
            # would poll on through a gateway shutdown.
            raise asyncio.CancelledError
        if reply is None:
            raise ModbusTimeout(f"{what}: no reply")
        if reply.isError():
            raise ModbusExceptionReply(int(getattr(reply, "exception_code", 0)), what)
        return reply

    def _silence_error(self, what: str, unit: int, exc: Exception) -> ModbusError:
        received = self._rx
        if not received:
            if not self.connected:
                return ModbusConnectionError(f"{what}: connection lost")
            return ModbusTimeout(f"{what}: no reply")
        head = received[:24].hex(" ")
        if self.endpoint.transport != "tcp" and len(received) >= 4 and received[0] != unit \
                and _crc_ok(received):
            return ModbusWrongUnit(f"{what}: reply from unit {received[0]} ({head})")
        return ModbusFrameError(f"{what}: bad frame, {len(received)} bytes ({head})")

    async def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        else:
            self._client.close()


def _serial_problem(port: str) -> str:
    if "://" not in port and not os.path.exists(port):  # a stat of /dev: not blocking
        return f"no such serial port {port}"
    return f"cannot open serial port {port} (in use by another program, or no permission?)"


def _crc_ok(frame: bytes) -> bool:
    crc = 0xFFFF
    for byte in frame[:-2]:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return frame[-2:] == crc.to_bytes(2, "little")
