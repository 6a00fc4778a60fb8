"""Real pymodbus servers for this driver's tests, the benchmarks and the demo: TCP, and
RTU over pty pairs. The driver never imports it (a gateway that runs ``modbus`` devices
does not load pymodbus's server side); this and drivers/modbus/client.py are the two
modules that import pymodbus, the client side there, the server side here.

* :class:`Device` - one unit's datastore (0-based addresses, unlike pymodbus's own
  blocks, which are off by one), with "holes" the device rejects like a real meter whose
  map has gaps, and counting of the requests it receives.
* :class:`TcpSim` / :class:`RtuSim` - servers in the current event loop.
* :class:`PtyRelay` - two pty pairs joined by a relay in this loop: the server opens one
  slave, the gateway the other; the relay can corrupt bytes (garbage, CRC errors) or pace
  them at a baud rate.
* :class:`PacedLine` - a half-duplex RS-485 line between two pty pairs in its own thread,
  paced at a baud rate with ``time.sleep`` precision (not the event loop's ~1 ms), with
  the device's end-of-frame silence: the benchmark's emulated 9600-baud line.
* :class:`ServerThread` - any of the above in its own thread and loop, for tests that
  run the real ``iotgw run`` process.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from drivers.modbus.points import Point

FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 6: "holding",
            15: "coil", 16: "holding"}
_STORE = {"coil": "c", "discrete": "d", "holding": "h", "input": "i"}


@dataclass
class Device:
    """A unit's four tables as dicts (address -> value); missing addresses read as 0."""

    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coil: dict[int, bool] = field(default_factory=dict)
    discrete: dict[int, bool] = field(default_factory=dict)
    holes: dict[str, set[int]] = field(default_factory=dict)
    """Addresses per table the device rejects with exception 2 (illegal address)."""
    fail: int | None = None
    """Answer every read with this exception code (4 device failure, 6 busy ...)."""
    short: int | None = None
    """Return at most this many values per read, whatever was asked: a device whose
    registers changed length (firmware update, wrong model behind the profile)."""

    def put(self, point: Point, value: Any) -> None:
        words = point.encode(value)
        table = getattr(self, point.table)
        for i, word in enumerate(words):
            table[point.address + i] = word


class _Context(ModbusDeviceContext):
    """pymodbus device context backed by a :class:`Device`, counting requests."""

    def __init__(self, device: Device, units: Units, unit: int) -> None:
        # Tiny placeholder blocks: the default ones hold 4 x 65536 values per unit
        # (~8 MB each), which would dominate the RSS of a 100-device benchmark.
        tiny = {k: ModbusSequentialDataBlock(0, [0]) for k in ("di", "co", "ir", "hr")}
        super().__init__(**tiny)
        self.device, self.units, self.unit = device, units, unit

    def getValues(self, func_code: int, address: int, count: int = 1) -> Any:
        table = FC_TABLE[func_code]
        if func_code in (1, 2, 3, 4):
            self.units.record((self.unit, table, address, count))
        if self.device.fail is not None:
            return ExcCodes(self.device.fail)
        holes = self.device.holes.get(table, set())
        if any(a in holes for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        values = getattr(self.device, table)
        default: Any = False if table in ("coil", "discrete") else 0
        if self.device.short is not None:
            count = min(count, self.device.short)
        return [values.get(a, default) for a in range(address, address + count)]

    def setValues(self, func_code: int, address: int, values: Any) -> Any:
        table = FC_TABLE[func_code]
        self.units.record((self.unit, f"write:{table}", address, len(values)))
        holes = self.device.holes.get(table, set())
        if any(a in holes for a in range(address, address + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        store = getattr(self.device, table)
        for i, value in enumerate(values):
            store[address + i] = value
        return None


class Units:
    """The unit ids a server answers for; remove one to make it silent (dead meter)."""

    def __init__(self, devices: dict[int, Device], *, keep_requests: bool = True) -> None:
        self.requests: list[tuple[int, str, int, int]] = []
        """(unit, table or ``write:<table>``, address, count) of every request, in order,
        unless ``keep_requests`` is off (the demo, which runs for days, only counts)."""
        self.request_total = 0
        self.keep_requests = keep_requests
        self.devices = devices
        self.context = ModbusServerContext(
            devices={u: _Context(d, self, u) for u, d in devices.items()}, single=False)

    def record(self, request: tuple[int, str, int, int]) -> None:
        self.request_total += 1
        if self.keep_requests:
            self.requests.append(request)

    def kill(self, unit: int) -> None:
        del self.context[unit]

    def revive(self, unit: int) -> None:
        self.context[unit] = _Context(self.devices[unit], self, unit)

    def count(self, unit: int | None = None, table: str | None = None) -> int:
        return sum(1 for u, t, _, _ in self.requests
                   if (unit is None or u == unit) and (table is None or t == table))


class TcpSim:
    def __init__(self, units: Units, port: int, framer: FramerType = FramerType.SOCKET) -> None:
        self.units, self.port = units, port
        self.server = ModbusTcpServer(units.context, framer=framer, address=("127.0.0.1", port),
                                      ignore_missing_devices=True)

    async def start(self) -> TcpSim:
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        await self.server.shutdown()


class RtuSim:
    def __init__(self, units: Units, port: str, baudrate: int = 9600) -> None:
        self.units = units
        self.server = ModbusSerialServer(units.context, framer=FramerType.RTU, port=port,
                                         baudrate=baudrate, ignore_missing_devices=True)

    async def start(self) -> RtuSim:
        await self.server.serve_forever(background=True)
        return self

    async def stop(self) -> None:
        await self.server.shutdown()


Mangle = Callable[[str, bytes], bytes]


def _two_raw_ptys() -> tuple[list[int], str, str]:
    """Two raw pty pairs for a relay: fds [server master, server slave, client master,
    client slave], the server's port path and the client's."""
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (m1, s1, m2, s2):
        tty.setraw(fd)
    return [m1, s1, m2, s2], os.ttyname(s1), os.ttyname(s2)


class PtyRelay:
    """``server_port`` <-> relay <-> ``client_port``, with an optional byte mangler.

    ``mangle(direction, data)`` sees every chunk ("up": gateway -> device, "down":
    device -> gateway) and returns what to pass on. ``baudrate`` paces bytes like a
    real line (10 or 11 bits per character) instead of passing them instantly.
    """

    def __init__(self, mangle: Mangle | None = None, baudrate: int | None = None,
                 bits_per_char: int = 10) -> None:
        self.mangle = mangle
        self.char_time = bits_per_char / baudrate if baudrate else 0.0
        self._fds, self.server_port, self.client_port = _two_raw_ptys()
        self._server_master, self._client_master = self._fds[0], self._fds[2]
        self._tasks: list[asyncio.Task[None]] = []
        self.bytes = {"up": 0, "down": 0}

    async def start(self) -> PtyRelay:
        self._tasks = [
            asyncio.create_task(self._pump(self._client_master, self._server_master, "up")),
            asyncio.create_task(self._pump(self._server_master, self._client_master, "down")),
        ]
        return self

    async def _pump(self, src: int, dst: int, direction: str) -> None:
        loop = asyncio.get_running_loop()
        line_free = loop.time()
        while True:
            ready = loop.create_future()
            loop.add_reader(src, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(src)
            try:
                data = os.read(src, 4096)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            self.bytes[direction] += len(data)
            if self.mangle is not None:
                data = self.mangle(direction, data)
            if self.char_time:
                # The line is busy until the previous chunk has been "transmitted".
                line_free = max(line_free, loop.time()) + len(data) * self.char_time
                await asyncio.sleep(line_free - loop.time())
            if data:
                os.write(dst, data)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass


class PacedLine:
    """A half-duplex serial line between two pty pairs, run by a thread of its own.

    Every chunk occupies the line for ``len * bits_per_char / baudrate`` seconds (one
    direction at a time, as on RS-485) and is delivered when its last bit would arrive.
    A request ("up", gateway -> device) is delivered ``turnaround_chars`` characters
    later still: a real RTU device only knows a frame has ended after 3.5 characters of
    silence, so it cannot answer sooner. The gateway's own 3.5-character silence before
    its next request is the driver's job (the bus scheduler's inter-frame delay), and is
    what this line measures, not something it adds.

    ``frames`` counts chunks per direction (pymodbus writes a frame in one ``write``);
    ``trace`` (when ``record``) holds ``(direction, arrived, delivered, nbytes)`` per chunk,
    monotonic seconds: where the time between frames goes (gateway or device turnaround).
    """

    def __init__(self, baudrate: int, bits_per_char: int = 11, turnaround_chars: float = 3.5,
                 mangle: Mangle | None = None, record: bool = False) -> None:
        self.char_time = bits_per_char / baudrate
        self.record = record
        self.trace: list[tuple[str, float, float, int]] = []
        self.turnaround = turnaround_chars * self.char_time
        self.mangle = mangle
        self._fds, self.server_port, self.client_port = _two_raw_ptys()
        self._server_master, self._client_master = self._fds[0], self._fds[2]
        self.bytes = {"up": 0, "down": 0}
        self.frames = {"up": 0, "down": 0}
        self.busy = 0.0
        """Seconds the line carried characters."""
        self.late = 0.0
        """Seconds this thread delivered later than the line model said (its own jitter)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-line", daemon=True)

    def start(self) -> PacedLine:
        self._thread.start()
        return self

    def _run(self) -> None:
        client, server = self._client_master, self._server_master
        line_free = 0.0
        while not self._stop.is_set():
            ready, _, _ = select.select([client, server], [], [], 0.05)
            for src in ready:
                try:
                    data = os.read(src, 4096)
                except OSError:
                    time.sleep(0.01)
                    continue
                arrived = time.monotonic()
                direction = "up" if src == client else "down"
                dst = server if src == client else client
                self.bytes[direction] += len(data)
                self.frames[direction] += 1
                if self.mangle is not None:
                    data = self.mangle(direction, data)
                start = max(arrived, line_free)
                line_free = start + len(data) * self.char_time
                self.busy += len(data) * self.char_time
                deliver = line_free + (self.turnaround if direction == "up" else 0.0)
                pause = deliver - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                self.late += max(0.0, time.monotonic() - deliver)
                if data:
                    os.write(dst, data)
                if self.record:
                    self.trace.append((direction, arrived, time.monotonic(), len(data)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass


class ServerThread:
    """Run ``async setup() -> stop coroutine function`` in a background loop."""

    def __init__(self, setup: Callable[[], Any]) -> None:
        self._setup = setup
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: Any = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def boot() -> None:
            self._stop = await self._setup()
            self._ready.set()

        self.loop.run_until_complete(boot())
        self.loop.run_forever()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulator did not start")
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the server's loop (e.g. kill/revive a unit) and wait for it."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
