"""Serial device simulators' transports, shared by the serial drivers' ``sim.py``
(drivers/dlt645/sim.py, drivers/cjt188/sim.py, drivers/serial_line/sim.py): a
pseudo-terminal pair or a TCP port (a serial device server) with a :class:`StreamDevice`
answering on the far end, and the BCD / checksum helpers of the meter standards.

Used by the drivers' tests and by the demo (demo/); never imported by a driver at run
time. The meter simulators are built from the standards' frame definitions, deliberately
NOT from the drivers' codecs, so a shared misunderstanding cannot make both sides agree
on a wrong frame.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import tty
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def bcd_le(digits: str, negative: bool = False) -> bytes:
    """'00123456' -> 56 34 12 00 (lowest byte first); the sign sets the top bit."""
    if len(digits) % 2:
        digits = "0" + digits
    raw = bytearray(bytes.fromhex(digits))
    if negative:
        raw[0] |= 0x80
    return bytes(reversed(raw))


def cs(frame: bytes) -> int:
    return sum(frame) % 256


# -- transports --------------------------------------------------------------------------

Handler = Callable[[bytes], bytes]
"""Takes the bytes received so far (buffer is owned by the handler), returns the reply."""


class PtySerial:
    """A pty pair: the driver opens ``path``; the simulator reads and writes the master."""

    def __init__(self, device: StreamDevice) -> None:
        self.device = device
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PtySerial:
        self._thread.start()
        return self

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                continue
            reply = self.device.feed(data)
            if reply:
                self.write(reply)

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(2)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> PtySerial:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpSerial:
    """A serial device server: one TCP client at a time, raw bytes both ways."""

    def __init__(self, device: StreamDevice) -> None:
        self.device = device
        self._server = socket.create_server((LOOPBACK, 0))
        self.port: int = self._server.getsockname()[1]
        self.url = f"socket://{LOOPBACK}:{self.port}"
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TcpSerial:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.05)
                while not self._stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    reply = self.device.feed(data)
                    if reply:
                        conn.sendall(reply)

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(2)
        self._server.close()

    def __enter__(self) -> TcpSerial:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamDevice:
    """Accumulates received bytes and answers complete requests.

    ``requests`` keeps every request frame (what a test asserts on); ``keep_requests=False``
    only counts them in ``request_count`` (a demo that runs for days must not grow)."""

    def __init__(self, *, keep_requests: bool = True) -> None:
        self.buffer = bytearray()
        self.requests: list[bytes] = []
        self.request_count = 0
        self.keep_requests = keep_requests
        self.lock = threading.Lock()

    def feed(self, data: bytes) -> bytes:
        with self.lock:
            self.buffer.extend(data)
            out = bytearray()
            while True:
                frame = self.take_frame()
                if frame is None:
                    return bytes(out)
                self.request_count += 1
                if self.keep_requests:
                    self.requests.append(frame)
                out += self.answer(frame)

    def take_frame(self) -> bytes | None:
        raise NotImplementedError

    def answer(self, frame: bytes) -> bytes:
        raise NotImplementedError




class Pty:
    """A raw, non-blocking pty pair for simulators in the event loop (``add_reader``): the
    driver opens :attr:`path`, the simulator reads and writes :attr:`master`.

    The simulator keeps the slave open too, so the master never sees EIO while the
    driver reopens the port."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
