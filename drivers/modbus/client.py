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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
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

_READS = {
    "coil": "read_coils", "discrete": "read_discrete_inputs",
    "holding": "read_holding_registers", "input": "read_input_registers",
}


class ModbusLink:
    """One pymodbus async client for one bus. Callers serialize use (BusScheduler).

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
        self._client = self._make_client(endpoint, timeout)
        self._client.set_max_no_responses(1 << 30)
        for response in _FAST_RESPONSES:
            self._client.register(response)

    def _make_client(self, ep: Endpoint, timeout: float) -> Any:
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
        return bool(self._client.connected)

    async def connect(self) -> None:
        if self._client.connected:
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
        method = getattr(self._client, _READS[table])
        what = f"read {table}[{address}..{address + count - 1}] unit {unit}"
        reply = await self._call(what, unit, reply_timeout, method, address, count=count,
                                 device_id=unit)
        values = list(reply.bits[:count]) if table in ("coil", "discrete") else (
            reply.registers)
        if len(values) != count:
            raise ModbusWrongLength(f"{what}: the reply holds {len(values)} values")
        return values

    async def write(self, table: str, address: int, values: Sequence[int] | Sequence[bool],
                    unit: int, reply_timeout: float | None = None) -> None:
        """Write coils (FC 5/15) or holding registers (FC 6/16)."""
        what = f"write {table}[{address}..{address + len(values) - 1}] unit {unit}"
        client, timeout = self._client, reply_timeout
        if table == "coil":
            if len(values) == 1:
                await self._call(what, unit, timeout, client.write_coil, address,
                                 bool(values[0]), device_id=unit)
            else:
                await self._call(what, unit, timeout, client.write_coils, address,
                                 [bool(v) for v in values], device_id=unit)
        elif table == "holding":
            # FC 16 even for one register: FC 6 is not implemented by every meter,
            # FC 16 is by all that accept writes at all.
            await self._call(what, unit, timeout, client.write_registers, address,
                             [int(v) for v in values], device_id=unit)
        else:
            raise ValueError(f"{table} is read-only")

    async def _call(self, what: str, unit: int, reply_timeout: float | None, method: Any,
                    *args: Any, **kwargs: Any) -> Any:
        await self.connect()
        await self.quiet()
        self._client.ctx.comm_params.timeout_connect = reply_timeout or self.timeout
        try:
            reply = await method(*args, **kwargs)
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
            if not self._client.connected:
                return ModbusConnectionError(f"{what}: connection lost")
            return ModbusTimeout(f"{what}: no reply")
        head = received[:24].hex(" ")
        if self.endpoint.transport != "tcp" and len(received) >= 4 and received[0] != unit \
                and _crc_ok(received):
            return ModbusWrongUnit(f"{what}: reply from unit {received[0]} ({head})")
        return ModbusFrameError(f"{what}: bad frame, {len(received)} bytes ({head})")

    async def close(self) -> None:
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
