"""Polling one Modbus device over a bus it shares with others.

Every device on a bus uses one :class:`ModbusBus` (one pymodbus client + one
:class:`BusScheduler`), obtained from the core's shared resources, so an RS-485 port is
opened once and requests never interleave. Each request is one scheduler turn: a big
meter does not hold the line for its whole cycle, and a device in backoff only gets the
bus when nobody with an earlier deadline wants it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from drivers.modbus.client import (
    Endpoint,
    ModbusError,
    ModbusExceptionReply,
    ModbusLink,
)
from drivers.modbus.config import ModbusConfig
from drivers.modbus.planner import TCP, ReadPlan, Request, WireCost
from drivers.modbus.points import Point, PointReader, changed, reader
from drivers.modbus.profiles import limits_for, resolve_points
from gateway.driver import DeviceContext, DeviceState, Driver
from gateway.errors import CommandRefused, DeviceError
from gateway.reading import Reading
from gateway.scheduler import BusScheduler, DeviceHealth, PollTimer

T = TypeVar("T")

REPROBE_BAD_PERIOD = 300.0
"""Seconds (at least one poll cycle) between re-reads of points isolated as bad."""


def wire_cost(bus_config: Any, turnaround: float | None = None) -> WireCost:
    """The planner's price list for a bus: TCP, or RTU at the line's baud rate and format
    (RTU over TCP too: the bytes still cross a serial line behind the device server)."""
    if bus_config is None:
        return TCP
    endpoint = Endpoint.from_bus(bus_config)
    if endpoint.transport == "tcp":
        return TCP
    bits = 1 + endpoint.bytesize + (endpoint.parity != "N") + endpoint.stopbits
    return WireCost.serial(endpoint.baudrate, bits,
                           getattr(bus_config, "inter_frame_delay", None), turnaround)


class ModbusBus:
    """What devices on one bus share: the client and the scheduler."""

    def __init__(self, name: str, bus_config: Any, timeout: float | None = None) -> None:
        self.endpoint = Endpoint.from_bus(bus_config)
        gap = getattr(bus_config, "inter_frame_delay", None)
        # The link keeps the inter-frame silence itself, from the last byte on the line;
        # the scheduler adds none (it would count from the end of the previous turn,
        # after decoding, and its event-loop sleep rounds up to the next millisecond).
        self.link = ModbusLink(self.endpoint, timeout or bus_config.timeout, gap)
        self.scheduler = BusScheduler(name, 0.0)

    async def close(self) -> None:
        await self.scheduler.close()
        await self.link.close()


class ModbusDriver(Driver):
    config: ModbusConfig

    def __init__(self, config: ModbusConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.points, self.measurement = resolve_points(config)
        self.by_name: dict[str, Point] = {p.name: p for p in self.points}
        self.plan = ReadPlan(self.points,
                             limits_for(config, wire_cost(ctx.bus, config.turnaround)))
        self.timer = PollTimer(config.interval, backoff_base=config.interval,
                               backoff_max=config.backoff_max)
        self.health = DeviceHealth(ctx, offline_after=1)
        self.bus: ModbusBus | None = None
        self.cycles = 0
        self.reprobe_every = max(1, math.ceil(REPROBE_BAD_PERIOD / config.interval))
        """Good cycles between re-reads of bad points (one single-point read each)."""
        self._cycles_since_reprobe = 0
        self._last: dict[str, Any] = {}
        self._reader_cache: dict[int, tuple[Request, list[tuple[str, int, int, PointReader]]]] = {}
        self._cycle_lock = asyncio.Lock()

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        if self.ctx.bus is None or self.ctx.bus_name is None:
            raise DeviceError(f"device {self.ctx.device_id}: no bus configured")
        bus_config, timeout = self.ctx.bus, self.config.timeout

        async def make_bus() -> ModbusBus:
            return ModbusBus(self.ctx.bus_name or "", bus_config, timeout)

        async with self.ctx.resources.use(("modbus", self.ctx.bus_name), make_bus) as bus:
            self.bus = bus
            try:
                await self._loop()
            finally:
                self.bus = None

    async def _loop(self) -> None:
        self.timer.now_due()
        while True:
            delay = self.timer.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._cycle_lock:
                ok = await self._cycle()
            if ok:
                self.timer.success()
            else:
                self.timer.failure()

    async def poll_now(self) -> None:
        """Read at once (outside the grid; the regular schedule is unchanged)."""
        if self.bus is None:
            raise CommandRefused(f"device {self.ctx.device_id} is not running")
        async with self._cycle_lock:
            await self._cycle()

    # -- one poll cycle ------------------------------------------------------------

    async def _cycle(self) -> bool:
        """Read every planned request, emit one reading; False if the device failed."""
        stamp = time.time_ns()
        values: dict[str, Any] = {}
        tries = 1 if self.timer.failures else 1 + self.config.retries
        try:
            pending = list(self.plan.requests)
            while pending:
                request = pending.pop(0)
                pending[:0] = await self._read(request, values, tries)
            if self.plan.bad and self.plan.requests:
                self._cycles_since_reprobe += 1
                if self._cycles_since_reprobe >= self.reprobe_every:
                    self._cycles_since_reprobe = 0
                    await self._reprobe(values)
        except ModbusError as exc:
            self.health.failed(exc.kind, str(exc))
            return False
        self.cycles += 1
        if not self.plan.requests:
            self.health.failed("exception_reply", "device rejected every point: "
                               + "; ".join(f"{n}: {r}" for n, r in self.plan.bad.items()))
            self.plan = ReadPlan(self.points, self.plan.limits)  # re-probe after backoff
            return False
        self.health.ok((time.time_ns() - stamp) / 1e9)
        await self._emit(values, stamp)
        return True

    async def _read(self, request: Request, values: dict[str, Any], tries: int) -> list[Request]:
        """Read one request into ``values``; returns replacement requests after a split."""
        assert self.bus is not None
        link, unit = self.bus.link, self.config.unit
        try:
            words = await self._exchange(
                lambda: link.read(request.table, request.start, request.count, unit,
                                  self.config.timeout), tries)
        except ModbusExceptionReply as exc:
            if not exc.address_problem:
                raise
            replacement = self.plan.reject(request, str(exc))
            if not replacement:
                point = request.points[0]
                self.health.partial("bad_point", f"point {point.name} ({request}) rejected: "
                                    f"exception {exc.code}; no longer polled")
            return replacement
        for name, start, end, read in self._readers(request):
            try:
                value = read(words[start:end])
            except (ValueError, UnicodeDecodeError) as exc:
                self.health.partial("decode_error", f"point {name}: {exc}")
                continue
            if isinstance(value, float) and not math.isfinite(value):
                self.health.partial("not_finite", f"point {name} read {value}")
                continue
            values[name] = value
        return []

    def _readers(self, request: Request) -> list[tuple[str, int, int, PointReader]]:
        """(name, first word, end word, reader) per point of ``request``, built once per
        request of the plan: the poll path then does no per-point lookups."""
        cached = self._reader_cache.get(id(request))
        if cached is not None and cached[0] is request:
            return cached[1]
        readers = [(p.name, p.address - request.start, p.address - request.start + p.count,
                    reader(p)) for p in request.points]
        if len(self._reader_cache) > 4 * len(self.points) + 16:  # plans that were replaced
            self._reader_cache.clear()
        self._reader_cache[id(request)] = (request, readers)
        return readers

    async def _reprobe(self, values: dict[str, Any]) -> None:
        """Read each bad point alone, once; put back those the device answers again.

        One try each, no retries: a point still rejected stays bad (not counted or
        logged again); a timeout or garble is counted and ends this round, and the
        poll's result stands (the next cycle's regular reads tell whether the device
        is gone)."""
        assert self.bus is not None
        link, unit = self.bus.link, self.config.unit
        back: list[str] = []
        for point in self.plan.bad_points():
            try:
                words = await self._exchange(
                    partial(link.read, point.table, point.address, point.count, unit,
                            self.config.timeout), 1)
            except ModbusExceptionReply:
                continue
            except ModbusError as exc:
                self.ctx.count(exc.kind)
                break
            try:
                value = point.decode(words)
            except (ValueError, UnicodeDecodeError):
                continue
            back.append(point.name)
            if not (isinstance(value, float) and not math.isfinite(value)):
                values[point.name] = value
        if back:
            self.plan.restore(back)
            self.ctx.count("bad_point_recovered", len(back))
            self.health.problems.recovered(
                "partial:bad_point", f"device {self.ctx.device_id}: point(s) "
                f"{', '.join(back)} answer again and are polled again")
            if self.plan.bad:  # the others are still out: say so once more
                self.health.problems.report(
                    "partial:bad_point", "still rejected: " + ", ".join(self.plan.bad),
                    level=logging.WARNING)

    async def _exchange(self, call: Callable[[], Awaitable[T]], tries: int,
                        deadline: float | None = None) -> T:
        """One request per scheduler turn; lost/garbled replies retried ``tries - 1`` times."""
        assert self.bus is not None
        last: ModbusError | None = None
        for attempt in range(tries):
            if last is not None:
                self.ctx.count(last.kind)  # the final failure is counted by DeviceHealth
            async with self.bus.scheduler.turn(self.ctx.device_id,
                                               deadline or self.timer.deadline):
                try:
                    return await call()
                except ModbusExceptionReply:
                    raise
                except ModbusError as exc:
                    last = exc
                    if attempt == tries - 1:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _emit(self, values: dict[str, Any], stamp: int) -> None:
        fields: dict[str, Any] = {}
        for name, value in values.items():
            point = self.by_name[name]
            if point.on_change and not changed(point, self._last.get(name), value):
                continue
            fields[name] = value
            self._last[name] = value
        if fields:
            await self.ctx.emit([Reading(self.measurement, {}, fields, stamp)])

    # -- writes ----------------------------------------------------------------------

    async def write(self, point: str, value: Any) -> dict[str, Any]:
        """Encode ``value`` for the point's type, write it, and (by default) read it back.

        Writes get the earliest possible deadline: an operator opening a gate should
        not wait behind a round of meter reads."""
        target = self.by_name.get(point)
        if target is None:
            raise CommandRefused(f"device {self.ctx.device_id} has no point {point!r}")
        if not target.writable:
            raise CommandRefused(f"point {point!r} is in the {target.table} table "
                                 f"({target.kind}) and cannot be written")
        if self.bus is None:
            raise CommandRefused(f"device {self.ctx.device_id} is not running")
        if isinstance(value, float) and not math.isfinite(value):
            raise CommandRefused(f"{point}: {value!r} is not a finite number and is not "
                                 "written")
        try:
            words = target.encode(value)
        except ValueError as exc:
            raise CommandRefused(str(exc)) from None
        except OverflowError:  # scaled past a float (1e308 at scale 0.001): no integer
            raise CommandRefused(f"{point}: {value!r} is out of range for "
                                 f"{target.kind}") from None
        link, unit, timeout = self.bus.link, self.config.unit, self.config.timeout
        await self._exchange(lambda: link.write(target.table, target.address, words, unit,
                                                timeout), 1, deadline=time.monotonic())
        self.ctx.count("writes")
        result: dict[str, Any] = {"device": self.ctx.device_id, "point": point,
                                  "value": value, "written": list(words)}
        if self.config.verify_writes:
            back = await self._exchange(
                lambda: link.read(target.table, target.address, target.count, unit, timeout),
                1 + self.config.retries, deadline=time.monotonic())
            result["read_back"] = target.decode(back)
            result["verified"] = [bool(b) if target.is_bits else int(b) for b in back] == [
                bool(w) if target.is_bits else int(w) for w in words]
            if not result["verified"]:
                self.ctx.count("write_not_verified")
                raise DeviceError(f"{self.ctx.device_id}.{point}: wrote {list(words)}, "
                                  f"read back {list(back)}")
        return result

    @property
    def state(self) -> DeviceState:
        return self.ctx.status.state
