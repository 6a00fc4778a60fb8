"""Bad input on a shared RTU line, against a real pymodbus serial server over ptys.

A unit whose replies come back with another unit id, a device whose registers change
length, a device that starts rejecting a range it used to answer (or fails outright),
garbage on the line: each is counted on that device only, its state says why, and the
healthy device on the same line keeps its grid (asserted on counts, not wall clock).
Also: points isolated as bad are re-read now and then and come back when they answer.
"""

from __future__ import annotations

from collections.abc import Callable

from drivers.modbus.driver import ModbusDriver
from drivers.modbus.sim import Device, TcpSim, Units
from drivers.modbus.tests.harness import (
    GOOD,
    Fleet,
    Line,
    crc16,
    tcp_bus,
)
from gateway.driver import DeviceState
from tests.support.servers import free_port


def replies_of(unit: int, change: Callable[[bytes], bytes]) -> Callable[[str, bytes], bytes]:
    """A relay mangler that rewrites the replies of one unit id only."""

    def mangle(direction: str, data: bytes) -> bytes:
        if direction == "down" and data[:1] == bytes([unit]):
            return change(data)
        return data

    return mangle





async def test_reply_from_another_unit_id_is_detected() -> None:
    # Unit 2's replies come back stamped "unit 9" with a valid CRC: a second device on
    # the line set to the wrong id, or a converter that rewrites ids.
    def as_unit_9(frame: bytes) -> bytes:
        body = bytes([9]) + frame[1:-2]
        return body + crc16(body)

    async with Line(replies_of(2, as_unit_9)) as line:
        await line.fleet.wait_for(lambda: line.healthy.cycles >= 10
                                  and line.odd.ctx.status.counters.get("wrong_unit", 0) >= 3)
    odd = line.odd.ctx.status
    assert odd.state is DeviceState.ERROR
    assert odd.last_error is not None and odd.last_error.startswith("wrong_unit: ")
    assert "reply from unit 9" in odd.last_error
    assert odd.counters.get("timeout", 0) == odd.counters.get("frame_error", 0) == 0
    assert line.fleet.readings["u2"] == []  # nothing from unit 9 passed as unit 2's
    assert line.units.count(2) >= 3  # the requests did reach unit 2
    line.assert_healthy_kept_its_schedule()


async def test_registers_that_change_length() -> None:
    async with Line() as line:
        await line.fleet.wait_for(lambda: line.odd.cycles >= 3)
        line.units.devices[2].short = 1  # every read now returns one register
        await line.fleet.wait_for(
            lambda: line.odd.ctx.status.counters.get("wrong_length", 0) >= 3)
        status = line.odd.ctx.status
        assert status.state is DeviceState.ERROR
        assert status.last_error is not None and status.last_error.startswith("wrong_length: ")
        assert "input[0..3] unit 2: the reply holds 1 values" in status.last_error
        before = len(line.fleet.readings["u2"])
        line.units.devices[2].short = None
        await line.fleet.wait_for(lambda: len(line.fleet.readings["u2"]) >= before + 3)
        assert line.odd.ctx.status.state is DeviceState.ONLINE
    # Nothing decoded from a short reply: every reading the device produced is whole.
    assert all(dict(r.fields) == GOOD[2] for r in line.fleet.readings["u2"])
    assert line.odd.plan.bad == {} and len(line.odd.plan) == 2  # no split over it
    line.assert_healthy_kept_its_schedule()


async def test_device_starts_rejecting_a_range_it_used_to_answer() -> None:
    async with Line() as line:
        odd: ModbusDriver = line.odd
        odd.reprobe_every = 4
        await line.fleet.wait_for(lambda: odd.cycles >= 3)
        assert len(odd.plan) == 2  # input[0..3] and holding[16]
        device = line.units.devices[2]
        device.holes = {"input": {2, 3}}  # energy is suddenly an illegal address
        await line.fleet.wait_for(lambda: odd.ctx.status.counters.get("bad_point", 0) == 1)
        assert set(odd.plan.bad) == {"energy"}
        assert "exception 2 (illegal data address)" in odd.plan.bad["energy"]
        assert odd.ctx.status.state is DeviceState.ONLINE  # the rest is still read
        await line.fleet.wait_for(lambda: len(line.fleet.readings["u2"]) >= 8)
        last = dict(line.fleet.readings["u2"][-1].fields)
        assert last == {"voltage": 230.5, "status": 2}

        # Now the device fails outright (exception 4): an error, not a reason to split.
        device.fail = 4
        await line.fleet.wait_for(lambda: odd.ctx.status.state is DeviceState.ERROR)
        assert "exception 4 (server device failure)" in (odd.ctx.status.last_error or "")
        splits = odd.plan.splits
        device.fail = None
        device.holes = {}
        # Re-probing finds energy again; it is read with voltage in one request again.
        await line.fleet.wait_for(lambda: "energy" in line.fleet.readings["u2"][-1].fields)
        assert odd.ctx.status.state is DeviceState.ONLINE
    assert odd.plan.splits == splits  # exception 4 split nothing
    assert odd.plan.bad == {}
    assert [(r.table, r.start, r.count) for r in odd.plan.requests] == [
        ("holding", 16, 1), ("input", 0, 4)]
    counters = odd.ctx.status.counters
    assert counters["bad_point"] == 1 and counters["bad_point_recovered"] == 1
    assert counters["exception_reply"] >= 1
    assert dict(line.fleet.readings["u2"][-1].fields) == GOOD[2]
    line.assert_healthy_kept_its_schedule()


async def test_garbage_is_counted_on_the_device_it_hit() -> None:
    async with Line(replies_of(2, lambda frame: b"\xff\x00\x13\x37\xff")) as line:
        await line.fleet.wait_for(lambda: line.healthy.cycles >= 10
                                  and line.odd.ctx.status.counters.get("frame_error", 0) >= 3)
    status = line.odd.ctx.status
    assert status.state is DeviceState.OFFLINE
    assert status.last_error is not None and status.last_error.startswith("frame_error: ")
    assert "bad frame, 5 bytes (ff 00 13 37 ff)" in status.last_error
    assert status.counters.get("timeout", 0) == 0
    assert line.fleet.readings["u2"] == []
    line.assert_healthy_kept_its_schedule()


async def test_bad_point_is_reprobed_and_comes_back() -> None:
    device = Device(holding={0: 1, 1: 2, 2: 3}, holes={"holding": {1}})
    units = Units({4: device})
    server = await TcpSim(units, free_port()).start()
    try:
        fleet = Fleet({"plc": tcp_bus(server.port)})
        driver = fleet.add(id="fw", bus="plc", unit=4, interval=0.02,
                           points=[{"name": f"r{a}", "address": a} for a in (0, 1, 2)])
        driver.reprobe_every = 3
        await fleet.start()
        await fleet.wait_for(lambda: driver.cycles >= 12)
        # Isolated once, then one single-register read of r1 every third good cycle.
        probes = sum(1 for r in units.requests if r == (4, "holding", 1, 1))
        cycles = driver.cycles
        assert set(driver.plan.bad) == {"r1"}
        assert probes - 1 in (cycles // 3, cycles // 3 + 1), (probes, cycles)
        assert driver.ctx.status.counters["bad_point"] == 1  # not recounted per probe
        assert driver.ctx.status.state is DeviceState.ONLINE
        assert dict(fleet.readings["fw"][-1].fields) == {"r0": 1, "r2": 3}
        device.holes = {}  # firmware update: r1 exists now
        await fleet.wait_for(lambda: "r1" in fleet.readings["fw"][-1].fields)
        mark = len(units.requests)
        await fleet.wait_for(lambda: len(units.requests) >= mark + 5)
        await fleet.stop()
    finally:
        await server.stop()
    assert driver.plan.bad == {}
    assert [(r.start, r.count) for r in driver.plan.requests] == [(0, 3)]
    assert set(units.requests[mark:]) == {(4, "holding", 0, 3)}  # one read per cycle again
    assert driver.ctx.status.counters["bad_point_recovered"] == 1
    assert dict(fleet.readings["fw"][-1].fields) == {"r0": 1, "r1": 2, "r2": 3}
