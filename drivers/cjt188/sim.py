"""A CJ/T 188 meter bus simulator (water, heat, gas meters): 901F reads in either DI
byte order, broadcast address reads, error replies; noise and preambles on demand.

Used by this driver's tests and by the demo (demo/meters.py gives it live meters); the
driver never imports it. Built from the standard's frame definitions, deliberately NOT
from drivers/cjt188/frame.py, so a shared misunderstanding cannot make both sides agree
on a wrong frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.serialbus.sim import StreamDevice, bcd_le, cs

__all__ = ["Cjt188Bus", "Meter188", "water_body"]


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

    def reading(self) -> bytes:
        """The 901F body to answer with now (a live meter, the demo's, overrides this)."""
        return self.body


def water_body(total: str, unit: int, settle: str, settle_unit: int, when: str,
               st1: int = 0, st2: int = 0) -> bytes:
    """Build a water/gas 901F body: totals (8 BCD digits) + unit, time YYYYMMDDhhmmss."""
    return (bcd_le(total) + bytes([unit]) + bcd_le(settle) + bytes([settle_unit])
            + bcd_le(when) + bytes([st1, st2]))


class Cjt188Bus(StreamDevice):
    """Every meter on one M-Bus/RS-485 line: 901F reads, broadcast address reads (810A),
    error replies for other DIs; dead meters stay silent."""

    def __init__(self, meters: Sequence[Meter188], *, noise: bytes = b"",
                 preamble: bytes = b"\xfe\xfe\xfe", keep_requests: bool = True) -> None:
        super().__init__(keep_requests=keep_requests)
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
        return self.reply(meter, 0x81, di + data[2:3] + meter.reading())
