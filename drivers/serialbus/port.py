"""The one module that imports pyserial.

A port is a local device (``/dev/ttyUSB0``, a pty) or any pyserial URL (``socket://host:port``
for serial device servers, ``rfc2217://``). pyserial is blocking, so one daemon thread per
open port reads continuously into a buffer the event loop consumes; bytes that arrive
while nobody waits are kept, not lost (the frame scanner later decides what is noise).
Writes go through a worker thread too, so a stuck device server cannot freeze the loop.

pyserial errors never escape: they become :class:`PortError`, and the next use reopens
the port, so an unplugged adapter or a rebooted device server heals by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import serial

from drivers.serialbus.framing import Received, Scanner
from gateway.errors import DeviceError

if TYPE_CHECKING:  # the driver package imports no config model at run time
    from gateway.config.models import SerialBus

READ_SLICE = 0.05
"""Longest the reader thread blocks in one read: bounds how long close() waits."""


class PortError(DeviceError):
    """The port could not be opened, or failed while in use."""


@dataclass(frozen=True)
class PortSettings:
    """Everything needed to open a port; mirrors the ``buses`` entry of the config."""

    url: str
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1

    @classmethod
    def from_bus(cls, bus: SerialBus) -> PortSettings:
        return cls(url=bus.port, baudrate=bus.baudrate, parity=bus.parity,
                   bytesize=bus.bytesize, stopbits=bus.stopbits)

    def char_time(self) -> float:
        """Seconds one character takes on the wire (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate


class SerialPort:
    """An open-on-demand port with a background reader thread."""

    def __init__(self, settings: PortSettings) -> None:
        self.settings = settings
        self._serial: serial.Serial | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._data = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: str | None = None
        self._write_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._serial is not None and self._failure is None

    async def open(self) -> None:
        """Open (or reopen after a failure); raises PortError."""
        if self.is_open:
            return
        await self.close()
        self._loop = asyncio.get_running_loop()
        s = self.settings
        try:
            port = await asyncio.to_thread(
                serial.serial_for_url, s.url, baudrate=s.baudrate, parity=s.parity,
                bytesize=s.bytesize, stopbits=s.stopbits, timeout=READ_SLICE,
                write_timeout=5.0)
        except Exception as exc:  # SerialException, OSError, termios.error, ValueError...
            raise PortError(f"cannot open {s.url}: {exc}") from None
        self._serial = port
        self._failure = None
        self._stop.clear()
        with self._lock:
            self._buffer.clear()
        self._reader = threading.Thread(target=self._read_loop, args=(port,),
                                        name=f"serial-reader {s.url}", daemon=True)
        self._reader.start()

    async def close(self) -> None:
        port, reader = self._serial, self._reader
        self._serial, self._reader = None, None
        self._stop.set()
        if reader is not None:
            await asyncio.to_thread(reader.join, 2.0)
        if port is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(port.close)

    def _read_loop(self, port: serial.Serial) -> None:
        while not self._stop.is_set():
            try:
                chunk = port.read(max(1, port.in_waiting))
            except Exception as exc:  # pyserial raises many kinds; all mean "port gone"
                if not self._stop.is_set():
                    self._fail(f"{self.settings.url}: read failed: {exc}")
                return
            if chunk:
                with self._lock:
                    self._buffer.extend(chunk)
                self._wake()

    def _fail(self, message: str) -> None:
        self._failure = message
        self._wake()

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._data.set)

    def _check(self) -> None:
        if self._serial is None:
            raise PortError(f"{self.settings.url}: port not open")
        if self._failure is not None:
            raise PortError(self._failure)

    # -- I/O -------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        await self.open()
        self._check()
        port = self._serial
        assert port is not None
        async with self._write_lock:
            try:
                await asyncio.to_thread(_write_all, port, data)
            except Exception as exc:
                self._fail(f"{self.settings.url}: write failed: {exc}")
                raise PortError(self._failure or "write failed") from None

    def discard_input(self) -> int:
        """Drop buffered bytes (stale replies, noise) before a new request; returns how many."""
        with self._lock:
            n = len(self._buffer)
            self._buffer.clear()
        return n

    async def receive(self, scan: Scanner, deadline: float) -> Received:
        """Bytes up to the first complete frame ``scan`` accepts, or what came by ``deadline``.

        Noise and rejected candidates are consumed and counted; bytes of a frame still
        arriving stay buffered. The event is cleared before the buffer is looked at, so a
        chunk landing in between always wakes us."""
        await self.open()
        junk = bad = 0
        while True:
            self._data.clear()
            self._check()
            with self._lock:
                result = scan(bytes(self._buffer))
                del self._buffer[:result.consumed]
            junk += result.junk
            bad += result.bad
            if result.frame is not None:
                return Received(result.frame, junk, bad, timed_out=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Received(None, junk, bad, timed_out=True)
            try:
                async with asyncio.timeout(remaining):
                    await self._data.wait()
            except TimeoutError:
                pass

    async def read_available(self, deadline: float) -> bytes:
        """Whatever is buffered, waiting for something until ``deadline``; b'' on timeout."""
        await self.open()
        while True:
            self._data.clear()
            self._check()
            with self._lock:
                if self._buffer:
                    data = bytes(self._buffer)
                    self._buffer.clear()
                    return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b""
            try:
                async with asyncio.timeout(remaining):
                    await self._data.wait()
            except TimeoutError:
                pass


class RawChannel:
    """A synchronous, non-blocking byte channel for libraries that run their own I/O loop
    in a thread (libosdp). Failures are remembered in ``failure`` instead of raised into
    the library's thread; the owner checks it and rebuilds the channel."""

    def __init__(self, settings: PortSettings) -> None:
        s = settings
        self.failure: str | None = None
        try:
            self._serial = serial.serial_for_url(
                s.url, baudrate=s.baudrate, parity=s.parity, bytesize=s.bytesize,
                stopbits=s.stopbits, timeout=0, write_timeout=1.0)
        except Exception as exc:
            raise PortError(f"cannot open {s.url}: {exc}") from None

    def read(self, max_bytes: int) -> bytes:
        try:
            return self._serial.read(max_bytes)
        except Exception as exc:
            self.failure = f"read failed: {exc}"
            return b""

    def write(self, data: bytes) -> int:
        try:
            return self._serial.write(data) or 0
        except Exception as exc:
            self.failure = f"write failed: {exc}"
            return 0

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self._serial.reset_input_buffer()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._serial.close()


def _write_all(port: serial.Serial, data: bytes) -> None:
    port.write(data)
    port.flush()
