"""Modbus TCP against a real pymodbus server: every type and order, request counts,
holes split, writes encoded correctly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.client import Endpoint, ModbusLink
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.profiles import load_profile
from drivers.modbus.sim import Device, TcpSim, Units
from drivers.modbus.tests.harness import Fleet, layout, tcp_bus
from gateway.driver import DeviceState
from gateway.errors import CommandRefused
from tests.support.servers import free_port


@pytest.fixture
async def sim() -> AsyncIterator[TcpSim]:
    _, device, _ = layout()
    units = Units({1: device, 2: Device(), 7: Device()})
    server = await TcpSim(units, free_port()).start()
    yield server
    await server.stop()


async def test_every_type_and_order_decodes_exactly(sim: TcpSim) -> None:
    points, _, expected = layout()
    fleet = Fleet({"plc": tcp_bus(sim.port)})
    driver = fleet.add(id="all-types", bus="plc", unit=1, points=points, interval=0.05)
    await fleet.start()
    await fleet.wait_for(lambda: len(fleet.readings["all-types"]) >= 3)
    await fleet.stop()
    reading = fleet.readings["all-types"][0]
    assert dict(reading.fields) == expected
    assert reading.measurement == "modbus"
    assert driver.ctx.status.state is DeviceState.ONLINE
    latency = driver.ctx.status.poll_seconds  # exported as iotgw_device_poll_seconds
    assert latency is not None and latency > 0
    # Gaps of 3 merge on TCP, but the holding span exceeds 125 registers: two holding
    # reads, plus the coil (a lone coil sits in the coil table).
    span = max(p.end for p in driver.points if p.table == "holding")
    assert 125 < span <= 250
    per_cycle = len(driver.plan)
    assert per_cycle == 3
    assert sim.units.count(1) == per_cycle * driver.cycles


@pytest.mark.parametrize("name", ["eastron-sdm630", "chint-ddsu666", "water-meter-ultrasonic",
                                  "barrier-gate-controller"])
async def test_profile_cycle_uses_minimal_requests(name: str) -> None:
    profile = load_profile(name)
    device = Device()
    for i, point in enumerate(profile.points):
        if point.kind not in ("bit", "string"):
            device.put(point, True if point.kind == "bool" else i + 1)
    units = Units({5: device})
    server = await TcpSim(units, free_port()).start()
    try:
        fleet = Fleet({"b": tcp_bus(server.port)})
        driver = fleet.add(id=f"p-{name}", bus="b", unit=5, profile=name, interval=0.05)
        await fleet.start()
        await fleet.wait_for(lambda: driver.cycles >= 3)
        await fleet.stop()
    finally:
        await server.stop()
    per_cycle = len(driver.plan)
    tables = {p.table for p in profile.points}
    assert per_cycle >= len(tables)
    assert units.count(5) == per_cycle * driver.cycles
    fields = fleet.readings[f"p-{name}"][0].fields
    for i, point in enumerate(profile.points):
        if point.kind not in ("bit", "string", "bool"):
            assert fields[point.name] == pytest.approx(i + 1), point.name


async def test_rejected_hole_is_split_and_remembered(sim: TcpSim) -> None:
    device = Device(holding={0: 10, 1: 11, 5: 15, 6: 16, 7: 17, 40: 40},
                    holes={"holding": {2, 3, 4}})
    sim.units.devices[2] = device
    sim.units.revive(2)
    points = [{"name": f"r{a}", "address": a} for a in (0, 1, 5, 6, 7)]
    fleet = Fleet({"plc": tcp_bus(sim.port)})
    driver = fleet.add(id="holey", bus="plc", unit=2, points=points, interval=0.05)
    await fleet.start()
    await fleet.wait_for(lambda: driver.cycles >= 4)
    await fleet.stop()
    # First cycle: 0..7 rejected, split at the widest gap into 0..1 and 5..7; afterwards
    # two requests per cycle and no more rejected reads.
    assert [(r.start, r.count) for r in driver.plan.requests] == [(0, 2), (5, 3)]
    reads = [r for r in sim.units.requests if r[0] == 2]
    assert reads[:3] == [(2, "holding", 0, 8), (2, "holding", 0, 2), (2, "holding", 5, 3)]
    assert len(reads) == 1 + 2 * driver.cycles
    assert driver.plan.bad == {}
    for reading in fleet.readings["holey"]:
        assert dict(reading.fields) == {"r0": 10, "r1": 11, "r5": 15, "r6": 16, "r7": 17}


async def test_bad_point_is_isolated_and_reported(sim: TcpSim) -> None:
    device = Device(holding={0: 1, 2: 3}, holes={"holding": {1}})
    sim.units.devices[2] = device
    sim.units.revive(2)
    points = [{"name": f"r{a}", "address": a} for a in (0, 1, 2)]
    fleet = Fleet({"plc": tcp_bus(sim.port)})
    driver = fleet.add(id="badpt", bus="plc", unit=2, points=points, interval=0.05)
    await fleet.start()
    await fleet.wait_for(lambda: driver.cycles >= 3)
    await fleet.stop()
    assert set(driver.plan.bad) == {"r1"}
    assert driver.ctx.status.counters["bad_point"] == 1
    assert driver.ctx.status.state is DeviceState.ONLINE
    assert dict(fleet.readings["badpt"][-1].fields) == {"r0": 1, "r2": 3}


async def test_writes_reach_the_server_encoded(sim: TcpSim) -> None:
    device = Device()
    sim.units.devices[7] = device
    sim.units.revive(7)
    points = [
        {"name": "relay", "table": "coil", "address": 3},
        {"name": "setpoint", "address": 0x10, "type": "float32", "order": "CDAB"},
        {"name": "limit", "address": 0x20, "type": "int32", "order": "ABCD", "scale": 0.1},
        {"name": "label", "address": 0x30, "type": "string", "length": 3},
        {"name": "temp", "table": "input", "address": 0},
    ]
    fleet = Fleet({"plc": tcp_bus(sim.port)})
    driver: ModbusDriver = fleet.add(id="writer", bus="plc", unit=7, points=points,
                                     interval=0.2)
    await fleet.start()
    result = await driver.write("relay", True)
    assert result["verified"] is True and device.coil[3] is True
    await driver.write("setpoint", 123.456)
    assert [device.holding[0x10], device.holding[0x11]] == [0xE979, 0x42F6]
    await driver.write("limit", -12345678.9)
    raw = (device.holding[0x20] << 16) | device.holding[0x21]
    assert raw - (1 << 32) == -123456789
    await driver.write("label", "GATE")
    assert [device.holding[0x30 + i] for i in range(3)] == [0x4741, 0x5445, 0]
    with pytest.raises(CommandRefused, match="cannot be written"):
        await driver.write("temp", 1)
    with pytest.raises(CommandRefused, match=r"out of range|not representable"):
        await driver.write("limit", 1e12)
    # Outside probe: an integer point raised a bare OverflowError, a float one wrote NaN.
    with pytest.raises(CommandRefused, match=r"limit: 1e\+308 is out of range for int32"):
        await driver.write("limit", 1e308)  # x10 for the scale: infinity
    for name, bad in [(n, v) for n in ("limit", "setpoint")
                      for v in (float("nan"), float("inf"), -float("inf"))]:
        with pytest.raises(CommandRefused, match="not a finite number"):
            await driver.write(name, bad)
    await fleet.stop()
    writes = [r for r in sim.units.requests if r[1].startswith("write:")]
    assert writes == [(7, "write:coil", 3, 1), (7, "write:holding", 0x10, 2),
                      (7, "write:holding", 0x20, 2), (7, "write:holding", 0x30, 3)]


SDM630_FIVE = ("voltage_l1", "current_l1", "power_total", "frequency", "energy_import")


async def test_five_sdm630_points_take_one_tcp_request_per_cycle(sim: TcpSim) -> None:
    """The footprint workload's meter: five float32 points at 0x0000..0x0049 are one read
    on Modbus TCP by default (a fixed max_gap of 16 made it two)."""
    profile = load_profile("eastron-sdm630")
    device = Device()
    for i, point in enumerate(profile.points):
        device.put(point, float(i + 1))
    sim.units.devices[7] = device
    sim.units.revive(7)
    off = {p.name: {"enabled": False} for p in profile.points if p.name not in SDM630_FIVE}
    fleet = Fleet({"tcp": tcp_bus(sim.port)})
    driver = fleet.add(id="sdm", bus="tcp", unit=7, profile="eastron-sdm630", overrides=off,
                       interval=0.05)
    await fleet.start()
    await fleet.wait_for(lambda: driver.cycles >= 3)
    await fleet.stop()
    assert [(r.table, r.start, r.count) for r in driver.plan.requests] == [("input", 0, 0x4A)]
    assert sim.units.count(7) == driver.cycles
    want = {p.name: float(i + 1) for i, p in enumerate(profile.points) if p.name in SDM630_FIVE}
    assert dict(fleet.readings["sdm"][-1].fields) == want


async def test_max_gap_stays_an_installer_override(sim: TcpSim) -> None:
    profile = load_profile("eastron-sdm630")
    off = {p.name: {"enabled": False} for p in profile.points if p.name not in SDM630_FIVE}
    fleet = Fleet({"tcp": tcp_bus(sim.port)})
    driver = fleet.add(id="sdm", bus="tcp", unit=7, profile="eastron-sdm630", overrides=off,
                       max_gap=16)
    assert [(r.start, r.count) for r in driver.plan.requests] == [(0, 8), (0x34, 0x16)]


class CancelOnReply(ModbusLink):
    """A link whose reading task is cancelled in the loop step that delivers its reply."""

    victim: asyncio.Task[Any] | None = None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and self.victim is not None:
            self.victim.cancel()
        return super()._trace(sending, data)


async def test_a_cancel_that_meets_the_reply_is_not_lost(sim: TcpSim) -> None:
    """Python 3.11's wait_for (inside pymodbus) returned the reply and dropped the cancel:
    a device task cancelled at that moment polled on through the gateway's shutdown (the
    100-meter benchmark hung in Fleet.stop about one run in two)."""
    link = CancelOnReply(Endpoint("tcp", "127.0.0.1", sim.port), timeout=2.0)
    try:
        assert len(await link.read("holding", 0, 2, 1)) == 2  # not cancelled: a reply
        link.victim = asyncio.create_task(link.read("holding", 0, 2, 1))
        with pytest.raises(asyncio.CancelledError):
            await link.victim
    finally:
        await link.close()
