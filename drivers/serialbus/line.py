"""One RS-485 line shared by every polled device on it: the port and its bus scheduler.

All meters naming the same bus get the same :class:`SerialLine` through the core's
refcounted ``SharedResources`` (key ``("serial", bus name)``), so there is one open port
and one scheduler per bus, whichever serial protocol driver the meters use. It closes
after its last device stops.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from drivers.serialbus.framing import Received, Scanner
from drivers.serialbus.port import PortSettings, SerialPort
from gateway.driver import DeviceContext
from gateway.scheduler import BusScheduler

MIN_GAP_CHARS = 3.5


class SerialLine:
    def __init__(self, name: str, settings: PortSettings, timeout: float,
                 inter_frame_delay: float | None = None) -> None:
        self.name = name
        self.settings = settings
        self.timeout = timeout
        self.port = SerialPort(settings)
        gap = inter_frame_delay if inter_frame_delay is not None else \
            MIN_GAP_CHARS * settings.char_time()
        self.scheduler = BusScheduler(name, gap)

    async def exchange(self, request: bytes, scan: Scanner,
                       reply_timeout: float | None = None) -> Received:
        """Send one request and wait for the first frame ``scan`` accepts.

        Call inside ``scheduler.turn``. Input left over from before (late replies of a
        timed-out meter, noise) is dropped first and counted as junk: it cannot belong
        to this request. The wait starts after the request had time to leave the wire."""
        stale = self.port.discard_input() if self.port.is_open else 0
        await self.port.write(request)
        wire = len(request) * self.settings.char_time()
        wait = self.timeout if reply_timeout is None else reply_timeout
        deadline = time.monotonic() + wire + wait
        received = await self.port.receive(scan, deadline)
        if stale:
            return Received(received.frame, received.junk + stale, received.bad,
                            received.timed_out)
        return received

    async def close(self) -> None:
        await self.scheduler.close()
        await self.port.close()


@contextlib.asynccontextmanager
async def shared_line(ctx: DeviceContext) -> AsyncIterator[SerialLine]:
    """The device's bus, opened by its first user (port opened lazily on first request)."""
    bus = ctx.bus
    if bus is None or ctx.bus_name is None:
        raise ValueError(f"device {ctx.device_id} has no serial bus")
    if getattr(bus, "type", None) != "serial":
        raise ValueError(f"bus {ctx.bus_name} is not a serial bus")

    async def make() -> SerialLine:
        return SerialLine(ctx.bus_name or "", PortSettings.from_bus(bus), bus.timeout,
                          bus.inter_frame_delay)

    async with ctx.resources.use(("serial", ctx.bus_name), make) as line:
        yield line
