"""Backfill from a Hikvision access terminal's event log (AcsEvent search) after an outage
of the terminal and after a restart of the gateway, against the simulated terminal.

The outage is played in device time: the simulator's clock jumps a second per swipe, so
a ten-minute window of swipes is logged in well under a second of wall time. What is
checked is the window's content: every swipe stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

from drivers.event_stream.backfill import backfill
from drivers.event_stream.config import EventStreamConfig
from drivers.event_stream.position import Position
from drivers.event_stream.sim import HikvisionSim
from drivers.event_stream.stream import Attachment, HostStream
from drivers.event_stream.tests.harness import Running, read_points, running, write_config
from gateway.driver import DeviceContext
from gateway.reading import Reading
from tests.plugin_stub import StubGateway

OUTAGE_SWIPES = 600  # one a second for ten minutes of device time


def terminal(port: int, extra: str = "") -> str:
    return (f"- {{id: lobby, driver: event_stream, profile: hikvision, host: 127.0.0.1, "
            f"port: {port}, username: admin, password: hik-pass, reconnect_max: 1s, "
            f"backfill: true, backfill_page: 100{', ' + extra if extra else ''}}}\n")


def swipe_during_outage(sim: HikvisionSim, count: int) -> list[int]:
    serials = []
    for k in range(count):
        sim.clock_offset += 1.0
        serials.append(sim.swipe(f"0007{k:06d}", f"{2000 + k % 50}", on_stream=False)
                       ["serialNo"])
    return serials


def serials(gw_or_dir: Running | Path) -> list[int]:
    points = read_points(gw_or_dir) if isinstance(gw_or_dir, Path) else \
        gw_or_dir.points("access_event")
    return [int(p.fields["serial"]) for p in points if p.measurement == "access_event"]


def device_ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) * 1_000_000_000


async def test_ten_minute_outage_of_a_terminal_is_fully_backfilled(tmp_path: Path) -> None:
    sim = HikvisionSim(page_cap=30)
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", terminal(sim.port))
    async with running(config) as gw:
        await gw.until(lambda: sim.open_streams == 1, what="stream")
        before = [sim.swipe(f"0004{k:06d}", f"10{k:02d}")["serialNo"] for k in range(3)]
        await gw.until(lambda: serials(gw) == before, what="live swipes")
        await sim.stop()  # the terminal drops off the network
        status = gw.status("lobby")
        await gw.until(lambda: status.state == "offline", what="unreachable")
        assert status.last_error is not None and status.last_error.startswith("unreachable:")
        missed = swipe_during_outage(sim, OUTAGE_SWIPES)
        searches_before = len(sim.searches)
        await sim.start()  # back on the same address
        await gw.until(lambda: sim.open_streams == 1, what="reconnected")
        assert status.state == "offline"  # a terminal without keep-alives: until it talks
        after = [sim.swipe(f"0005{k:06d}", f"11{k:02d}")["serialNo"] for k in range(2)]
        await gw.until(lambda: status.state == "online", what="back online")
        expected = before + missed + after
        await gw.until(lambda: sorted(serials(gw)) == sorted(expected), timeout=60,
                       what="every swipe")
        await asyncio.sleep(0.5)
        stored = serials(gw)
        assert len(stored) == len(set(stored)) == len(expected), "a swipe stored twice"
        counters = gw.counters("lobby")
        assert counters["backfilled"] == OUTAGE_SWIPES
        assert counters["duplicate"] >= 1  # the last live swipe, read again from the log
        searches = sim.searches[searches_before:]
        assert len(searches) >= OUTAGE_SWIPES // 30  # paged at the terminal's cap
        # The search started at the device time of the last event seen before the outage
        assert searches[0]["startTime"] == sim.log[len(before) - 1]["time"]
        assert {s["major"] for s in searches} == {5}
        cards = {int(p.fields["serial"]): p.fields["card"] for p in gw.points("access_event")}
        assert all(cards[r["serialNo"]] == r["cardNo"] for r in sim.log)
        assert sim.stream_connects == 2
    await sim.stop()
    position = json.loads((tmp_path / "data" / "event_stream" / "lobby.json").read_text())
    assert position["time_ns"] == max(device_ns(r["time"]) for r in sim.log)
    assert set(expected) <= {serial for serial, _ in position["seen"]}


async def test_a_gateway_restart_backfills_from_the_stored_position(tmp_path: Path) -> None:
    sim = HikvisionSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", terminal(sim.port))
    async with running(config) as gw:
        await gw.until(lambda: sim.open_streams == 1, what="stream")
        first = [sim.swipe(f"0004{k:06d}", "1001")["serialNo"] for k in range(5)]
        await gw.until(lambda: serials(gw) == first, what="live swipes")
        await asyncio.sleep(0.3)  # the position is saved after the commit
    missed = swipe_during_outage(sim, 50)  # the gateway is down (upgrade, power cut)
    async with running(config) as gw:
        await gw.until(lambda: len(serials(gw)) == 55, what="backfilled after restart")
        await asyncio.sleep(0.5)
        assert sorted(serials(gw)) == first + missed
        assert gw.counters("lobby")["backfilled"] == 50
    await sim.stop()


async def test_first_start_reads_from_now_and_a_damaged_position_reads_back(
        tmp_path: Path) -> None:
    sim = HikvisionSim()
    await sim.start()
    sim.clock_offset = -3600.0
    history = swipe_during_outage(sim, 20)  # logged an hour before the gateway ever ran
    sim.clock_offset = 0.0
    config = write_config(tmp_path / "gw.yaml", terminal(sim.port))
    async with running(config) as gw:
        await gw.until(lambda: sim.searches or (tmp_path / "data/event_stream/lobby.json")
                       .exists(), what="position started")
        await asyncio.sleep(0.5)
        assert serials(gw) == []  # commissioning does not import the terminal's history
    (tmp_path / "data/event_stream/lobby.json").write_text("{not json")
    async with running(config) as gw:
        # unreadable: read back backfill_max (7 days), logged once; de-duplicated by id
        await gw.until(lambda: sorted(serials(gw)) == history, what="history read back")
    await sim.stop()


class GatedGateway(StubGateway):
    """Commits only when the test opens the gate."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir=data_dir)
        self.gate = asyncio.Event()

    async def wait_committed(self) -> None:
        await self.gate.wait()


async def test_the_position_advances_only_after_the_commit(tmp_path: Path) -> None:
    sim = HikvisionSim()
    await sim.start()
    logged = swipe_during_outage(sim, 40)
    gateway = GatedGateway(tmp_path)
    config = EventStreamConfig.model_validate({
        "id": "lobby", "driver": "event_stream", "profile": "hikvision", "host": "127.0.0.1",
        "port": sim.port, "username": "admin", "password": "hik-pass", "backfill": True,
        "backfill_page": 30})
    position = Position.load(tmp_path, "lobby")
    position.time_ns = device_ns(sim.log[0]["time"]) - 60_000_000_000
    position.save()
    saved = position.path.read_bytes() if position.path else b""

    async def emit(device_id: str, readings: object) -> None:
        raise AssertionError("the stream submits through the gateway")

    ctx = DeviceContext("lobby", emit, gateway=gateway)
    stream = HostStream(gateway, config)
    att = Attachment(config, ctx, position)
    stream.attach(att)
    try:
        task = asyncio.create_task(backfill(stream, att))
        for _ in range(200):
            if gateway.submitted:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        # One page submitted, not committed: nothing on disk has moved.
        assert [len(r) for _, r in gateway.submitted] == [30]
        assert position.path is not None and position.path.read_bytes() == saved
        gateway.gate.set()
        assert await task == 40
        await asyncio.sleep(0.1)
        got: list[Reading] = [r for _, batch in gateway.submitted for r in batch]
        assert [r.fields["serial"] for r in got] == logged
        on_disk = json.loads(position.path.read_text())
        assert on_disk["time_ns"] == device_ns(sim.log[-1]["time"])
        assert on_disk["seen"] == [[r["serialNo"], device_ns(r["time"]) // 10**9]
                                   for r in sim.log]
    finally:
        await stream.http.close()
        await sim.stop()
