"""A DL/T 645-2007/1997 meter bus simulator: every meter on one RS-485 line, answering
reads (with follow-up frames), broadcast address reads, error replies; noise, preambles,
corrupt replies and an impostor address on demand.

Used by this driver's tests and by the demo (demo/meters.py gives it live values); the
driver never imports it. Built from the standard's frame definitions, deliberately NOT
from drivers/dlt645/frame.py, so a shared misunderstanding cannot make both sides agree
on a wrong frame. Values are the raw bytes as the meter stores them (``bcd_le("00012345")``),
so a test states the wire content and the expected decoded value separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.serialbus.sim import StreamDevice, cs

__all__ = ["Dlt645Bus", "Meter645"]


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

    def value(self, di: int) -> bytes | None:
        """The value of ``di`` now, None when the meter has no such data (a live meter,
        the demo's, overrides this)."""
        return self.values.get(di)


class Dlt645Bus(StreamDevice):
    """Every meter on one RS-485 line; unknown DIs get error replies (no data)."""

    def __init__(self, meters: Sequence[Meter645], *, preamble: bytes = b"\xfe\xfe",
                 noise: bytes = b"", corrupt_next: int = 0, impostor: str | None = None,
                 keep_requests: bool = True) -> None:
        super().__init__(keep_requests=keep_requests)
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
            value = meter.value(di)
            if value is None:
                return self.reply(addr, read | 0xC0, b"\x02")
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
