"""RTU over pseudo-terminals: several units on one line, a dead unit, a noisy line."""

from __future__ import annotations

import itertools

from drivers.modbus.sim import Mangle, PacedLine, PtyRelay, RtuSim, Units
from drivers.modbus.tests.harness import POINTS, Fleet, meter, serial_bus
from gateway.config.models import SerialBus
from gateway.driver import DeviceState


async def line(units: Units, mangle: Mangle | None = None) -> tuple[PtyRelay, RtuSim]:
    relay = await PtyRelay(mangle).start()
    server = await RtuSim(units, relay.server_port).start()
    return relay, server


async def test_several_units_share_one_line() -> None:
    units = Units({u: meter(u) for u in (1, 2, 3)})
    relay, server = await line(units)
    try:
        fleet = Fleet({"rs485": serial_bus(relay.client_port)})
        drivers = [fleet.add(id=f"m{u}", bus="rs485", unit=u, points=POINTS, interval=0.05)
                   for u in (1, 2, 3)]
        await fleet.start()
        await fleet.wait_for(lambda: all(d.cycles >= 5 for d in drivers))
        await fleet.stop()
    finally:
        await server.stop()
        await relay.stop()
    for u, driver in zip((1, 2, 3), drivers, strict=True):
        fields = dict(fleet.readings[f"m{u}"][0].fields)
        assert fields == {"voltage": 230.5, "energy": 1234.56 + u, "status": u}
        # Two requests per cycle (input 0..3 + holding 16); the cycle that was in flight
        # when the fleet stopped may have sent one or both without being counted.
        assert 2 * driver.cycles <= units.count(u) <= 2 * driver.cycles + 2
    # One port, one scheduler for all three.
    assert drivers[0].bus is None and fleet.resources.active() == []


async def test_dead_unit_does_not_starve_the_line_and_comes_back() -> None:
    units = Units({u: meter(u) for u in (1, 2, 3)})
    units.kill(3)
    relay, server = await line(units)
    try:
        fleet = Fleet({"rs485": serial_bus(relay.client_port, timeout=0.1)})
        healthy = [fleet.add(id=f"h{u}", bus="rs485", unit=u, points=POINTS, interval=0.25,
                             retries=1) for u in (1, 2)]
        dead = fleet.add(id="dead", bus="rs485", unit=3, points=POINTS, interval=0.25,
                         retries=1, backoff_max=1.0)
        await fleet.start()
        await fleet.wait_for(lambda: all(d.cycles >= 12 for d in healthy))
        assert dead.ctx.status.state is DeviceState.OFFLINE
        assert "timeout" in (dead.ctx.status.last_error or "")
        probes = units.count(3)
        assert probes == 0  # the server never saw a valid answerable request for unit 3
        # Healthy units never skipped a slot of their grid while the dead one was probed,
        # and the dead one cost one short probe per backoff period (no retries offline).
        assert all(d.timer.missed == 0 for d in healthy)
        dead_bus, healthy_bus = fleet.drivers["dead"].bus, fleet.drivers["h1"].bus
        assert dead_bus is not None and healthy_bus is not None
        dead_turns = dead_bus.scheduler.stats["dead"].turns
        healthy_turns = healthy_bus.scheduler.stats["h1"].turns
        assert dead_turns <= healthy_turns / 3
        assert dead.ctx.status.counters["timeout"] == dead_turns
        units.revive(3)
        await fleet.wait_for(lambda: dead.ctx.status.state is DeviceState.ONLINE)
        await fleet.wait_for(lambda: len(fleet.readings["dead"]) >= 2)
        await fleet.stop()
    finally:
        await server.stop()
        await relay.stop()
    assert dict(fleet.readings["dead"][-1].fields)["status"] == 3


async def test_garbage_and_crc_errors_are_recovered_and_counted() -> None:
    counter = itertools.count()
    damaged = {"crc": 0, "garbage": 0}

    def noisy(direction: str, data: bytes) -> bytes:
        if direction != "down":
            return data
        n = next(counter)
        if n % 5 == 1:       # flip a bit in the payload: CRC error
            damaged["crc"] += 1
            return data[:3] + bytes([data[3] ^ 0x10]) + data[4:]
        if n % 5 == 3:       # line noise instead of the reply
            damaged["garbage"] += 1
            return b"\xff\x00\x13\x37\xff"
        return data

    units = Units({1: meter(1), 2: meter(2)})
    relay, server = await line(units, noisy)
    try:
        fleet = Fleet({"rs485": serial_bus(relay.client_port, timeout=0.15)})
        drivers = [fleet.add(id=f"n{u}", bus="rs485", unit=u, points=POINTS, interval=0.05,
                             retries=2) for u in (1, 2)]
        await fleet.start()
        await fleet.wait_for(lambda: all(d.cycles >= 10 for d in drivers), limit=40)
        await fleet.stop()
    finally:
        await server.stop()
        await relay.stop()
    frame_errors = sum(d.ctx.status.counters.get("frame_error", 0) for d in drivers)
    assert damaged["crc"] + damaged["garbage"] >= 4
    assert frame_errors >= damaged["crc"] + damaged["garbage"] - 2  # last ones in flight
    for u, driver in zip((1, 2), drivers, strict=True):
        assert driver.ctx.status.state is DeviceState.ONLINE
        for reading in fleet.readings[f"n{u}"]:  # nothing corrupted got through
            assert dict(reading.fields) == {"voltage": 230.5, "energy": 1234.56 + u,
                                            "status": u}


async def test_paced_9600_line_gets_the_3_5_character_silence() -> None:
    """On a line paced at 9600 baud (11-bit characters, emulated as 8N2 because ptys refuse
    parity), every request goes out at least 3.5 characters after the previous reply's
    last byte, counted by the line itself, never sooner."""
    line = PacedLine(9600, bits_per_char=11, record=True).start()
    units = Units({u: meter(u) for u in (1, 2)})
    server = await RtuSim(units, line.server_port).start()
    try:
        fleet = Fleet({"slow": SerialBus(type="serial", port=line.client_port, baudrate=9600,
                                         stopbits=2, timeout=0.5)})
        drivers = [fleet.add(id=f"s{u}", bus="slow", unit=u, points=POINTS, interval=0.001)
                   for u in (1, 2)]
        await fleet.start()
        await fleet.wait_for(lambda: all(d.cycles >= 5 for d in drivers))
        await fleet.stop()
    finally:
        await server.stop()
        line.stop()
    gap = 3.5 * 11 / 9600
    assert drivers[0].bus is None
    silences = [cur[1] - prev[2] for prev, cur in itertools.pairwise(line.trace)
                if prev[0] == "down" and cur[0] == "up"]
    assert len(silences) >= 18
    # 1 ms of slack: the line thread stamps "delivered" just after its write returns.
    assert min(silences) >= gap - 0.001, sorted(silences)[:3]
    for u, driver in zip((1, 2), drivers, strict=True):
        assert dict(fleet.readings[f"s{u}"][-1].fields) == {
            "voltage": 230.5, "energy": 1234.56 + u, "status": u}
        assert {k: v for k, v in driver.ctx.status.counters.items() if v} == {}
