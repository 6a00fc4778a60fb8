"""Independent serial device simulators for tests: DL/T 645 and CJ/T 188 meters, and a
line-printing reader, on a pseudo-terminal pair or a TCP port (a serial device server).

Built from the standards' frame definitions, deliberately NOT from the drivers' codecs,
so a shared misunderstanding cannot make both sides agree on a wrong frame. Values are
given as BCD digit strings exactly as the standards print them ("00012345.67" style
without the point), so a test states the wire content and the expected decoded value
separately.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.servers import LOOPBACK, free_port


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
        self.port = free_port()
        self.url = f"socket://{LOOPBACK}:{self.port}"
        self._server = socket.create_server((LOOPBACK, self.port))
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
        self._thread.join(2)
        self._server.close()

    def __enter__(self) -> TcpSerial:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamDevice:
    """Accumulates received bytes and answers complete requests."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.requests: list[bytes] = []
        self.lock = threading.Lock()

    def feed(self, data: bytes) -> bytes:
        with self.lock:
            self.buffer.extend(data)
            out = bytearray()
            while True:
                frame = self.take_frame()
                if frame is None:
                    return bytes(out)
                self.requests.append(frame)
                out += self.answer(frame)

    def take_frame(self) -> bytes | None:
        raise NotImplementedError

    def answer(self, frame: bytes) -> bytes:
        raise NotImplementedError


# -- DL/T 645 ----------------------------------------------------------------------------

@dataclass
class Meter645:
    """One meter: values by DI (raw value bytes as the meter stores them, unshifted)."""

    address: str  # 12 digits as printed
    values: dict[int, bytes] = field(default_factory=dict)
    version: str = "2007"
    dead: bool = False
    follow_chunks: dict[int, int] = field(default_factory=dict)
    """DI -> bytes per frame: the value is sent as a reply B1 plus follow-up frames."""
    error_code: dict[int, int] = field(default_factory=dict)
    """DI -> error byte to answer with instead of data."""

    @property
    def wire_address(self) -> bytes:
        return bytes.fromhex(self.address)[::-1]


class Dlt645Bus(StreamDevice):
    """Every meter on one RS-485 line; unknown DIs get error replies (no data)."""

    def __init__(self, meters: list[Meter645], *, preamble: bytes = b"\xfe\xfe",
                 noise: bytes = b"", corrupt_next: int = 0, impostor: str | None = None) -> None:
        super().__init__()
        self.meters = {m.wire_address: m for m in meters}
        self.preamble = preamble
        self.noise = noise
        self.corrupt_next = corrupt_next
        self.impostor = impostor
        """If set, every reply is preceded by one from this (other) address."""
        self._follow: dict[tuple[bytes, int], list[bytes]] = {}

    def take_frame(self) -> bytes | None:
        buf = self.buffer
        while True:
            start = buf.find(0x68)
            if start < 0:
                buf.clear()
                return None
            del buf[:start]
            if len(buf) < 10:
                return None
            if buf[7] != 0x68:
                del buf[:1]
                continue
            total = 12 + buf[9]
            if len(buf) < total:
                return None
            frame = bytes(buf[:total])
            del buf[:total]
            if frame[-1] == 0x16 and frame[-2] == cs(frame[:-2]):
                return frame
            # corrupt request: a real meter stays silent

    def reply(self, address: bytes, control: int, data: bytes) -> bytes:
        body = bytes([0x68]) + address + bytes([0x68, control, len(data)]) + bytes(
            (b + 0x33) % 256 for b in data)
        frame = body + bytes([cs(body), 0x16])
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            frame = frame[:-2] + bytes([(frame[-2] + 1) % 256, 0x16])
        return self.noise + self.preamble + frame

    def answer(self, frame: bytes) -> bytes:
        address, control = frame[1:7], frame[8]
        data = bytes((b - 0x33) % 256 for b in frame[10:-2])
        if control == 0x13 and address == b"\xaa" * 6:
            live = [m for m in self.meters.values() if not m.dead]
            return b"".join(self.reply(m.wire_address, 0x93, m.wire_address) for m in live)
        meter = self.meters.get(address)
        if meter is None or meter.dead:
            return b""
        out = b""
        if self.impostor is not None:
            fake = bytes.fromhex(self.impostor)[::-1]
            out += self.reply(fake, control | 0x80, data[:4] + b"\x99\x99\x99\x99")
        if meter.version == "2007":
            return out + self._answer(meter, control, data, 4, 0x11, 0x12, True)
        return out + self._answer(meter, control, data, 2, 0x01, 0x02, False)

    def _answer(self, meter: Meter645, control: int, data: bytes, di_size: int,
                read: int, follow: int, seq: bool) -> bytes:
        di_raw = data[:di_size]
        di = int.from_bytes(di_raw, "little")
        addr = meter.wire_address
        if control == read:
            if di in meter.error_code:
                return self.reply(addr, read | 0xC0, bytes([meter.error_code[di]]))
            if di not in meter.values:
                return self.reply(addr, read | 0xC0, b"\x02")
            value = meter.values[di]
            chunk = meter.follow_chunks.get(di)
            if chunk is None:
                return self.reply(addr, read | 0x80, di_raw + value)
            parts = [value[i:i + chunk] for i in range(0, len(value), chunk)]
            self._follow[(addr, di)] = parts[1:]
            return self.reply(addr, read | 0xA0, di_raw + parts[0])
        if control == follow:
            rest = self._follow.get((addr, di), [])
            if not rest:
                return self.reply(addr, follow | 0xC0, b"\x01")
            part = rest.pop(0)
            more = 0x20 if rest else 0
            tail = data[di_size:di_size + 1] if seq else b""
            return self.reply(addr, follow | 0x80 | more, di_raw + part + tail)
        return b""


# -- CJ/T 188 ----------------------------------------------------------------------------

@dataclass
class Meter188:
    """One meter: its type byte and the 901F body (after DI and SER) it answers."""

    address: str  # 14 digits as printed
    meter_type: int = 0x10
    body: bytes = b""
    dead: bool = False
    di_low_first: bool = False
    """Answer with DI 1F 90 (2018 practice) instead of 90 1F."""

    @property
    def wire_address(self) -> bytes:
        return bytes.fromhex(self.address)[::-1]


def water_body(total: str, unit: int, settle: str, settle_unit: int, when: str,
               st1: int = 0, st2: int = 0) -> bytes:
    """Build a water/gas 901F body: totals (8 BCD digits) + unit, time YYYYMMDDhhmmss."""
    return (bcd_le(total) + bytes([unit]) + bcd_le(settle) + bytes([settle_unit])
            + bcd_le(when) + bytes([st1, st2]))


class Cjt188Bus(StreamDevice):
    def __init__(self, meters: list[Meter188], *, noise: bytes = b"",
                 preamble: bytes = b"\xfe\xfe\xfe") -> None:
        super().__init__()
        self.meters = {m.wire_address: m for m in meters}
        self.noise = noise
        self.preamble = preamble

    def take_frame(self) -> bytes | None:
        buf = self.buffer
        while True:
            start = buf.find(0x68)
            if start < 0:
                buf.clear()
                return None
            del buf[:start]
            if len(buf) < 11:
                return None
            total = 13 + buf[10]
            if len(buf) < total:
                return None
            frame = bytes(buf[:total])
            del buf[:total]
            if frame[-1] == 0x16 and frame[-2] == cs(frame[:-2]):
                return frame

    def reply(self, meter: Meter188, control: int, data: bytes) -> bytes:
        body = bytes([0x68, meter.meter_type]) + meter.wire_address + bytes([control, len(data)])
        body += data
        return self.noise + self.preamble + body + bytes([cs(body), 0x16])

    def answer(self, frame: bytes) -> bytes:
        address, control, data = frame[2:9], frame[9], frame[11:-2]
        if address == b"\xaa" * 7 and control == 0x03:
            live = [m for m in self.meters.values() if not m.dead]
            return b"".join(self.reply(m, 0x83, data[:3]) for m in live)
        meter = self.meters.get(address)
        if meter is None or meter.dead or control != 0x01:
            return b""
        if data[:2] not in (b"\x90\x1f", b"\x1f\x90"):
            return self.reply(meter, 0xC1, data[:3] + b"\x01\x00")
        di = b"\x1f\x90" if meter.di_low_first else b"\x90\x1f"
        return self.reply(meter, 0x81, di + data[2:3] + meter.body)
