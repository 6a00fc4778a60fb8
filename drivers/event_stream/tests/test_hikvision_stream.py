"""Hikvision alertStream through a real gateway (in-process, file sink) against the
simulated terminal/camera (a real aiohttp server with Digest auth on loopback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.event_stream.driver import EventStreamDriver
from drivers.event_stream.sim import JPEG, HikvisionSim
from drivers.event_stream.stream import HostStream
from drivers.event_stream.tests.harness import Running, running, write_config


def hik(device_id: str, port: int, extra: str = "", password: str = "hik-pass") -> str:
    return (f"- {{id: {device_id}, driver: event_stream, profile: hikvision, host: 127.0.0.1, "
            f"port: {port}, username: admin, password: {password}, reconnect_max: 1s, "
            f"clear_after: 1.5s{', ' + extra if extra else ''}}}\n")


def host_stream(gw: Running, device_id: str) -> HostStream:
    driver = gw.gateway.drivers[device_id]
    assert isinstance(driver, EventStreamDriver) and driver.stream is not None
    return driver.stream


async def test_repeating_active_events_become_one_start_and_one_stop(tmp_path: Path) -> None:
    sim = HikvisionSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml",
                          hik("cam-ch1", sim.port, "channels: [1]")
                          + hik("cam-ch2", sim.port, "channels: [2]"))
    async with running(config) as gw:
        await gw.until(lambda: sim.open_streams == 1, what="one stream for both channels")
        for _ in range(8):  # motion on channel 1 for two seconds: ~once per 250 ms
            sim.alert("VMD", channel=1)
            await asyncio.sleep(0.25)
        sim.alert("linedetection", "active", channel=2, active_post_count="")  # empty count
        sim.alert("linedetection", "active", channel=2)
        sim.alert("linedetection", "inactive", channel=2)
        sim.alert("fielddetection", "inactive", channel=2)  # a stop with no start: dropped
        await gw.until(lambda: len(gw.points("camera_event")) == 4, what="four events")
        await asyncio.sleep(2.0)  # nothing more comes: no second start, no second stop
        ch1 = [(p.tags["event"], p.fields["action"], p.fields.get("cleared"))
               for p in gw.points("camera_event", "cam-ch1")]
        ch2 = [(p.tags["event"], p.fields["action"], p.fields.get("cleared"))
               for p in gw.points("camera_event", "cam-ch2")]
        assert ch1 == [("VMD", "start", None), ("VMD", "stop", "timeout")]
        assert ch2 == [("linedetection", "start", None), ("linedetection", "stop", "inactive")]
        stop = gw.points("camera_event", "cam-ch1")[1]
        start = gw.points("camera_event", "cam-ch1")[0]
        # the stop comes clear_after (1.5 s) after the last repeat, i.e. ~1.75 s after start
        assert 1.5e9 < stop.time_ns - start.time_ns < 4.5e9
        stream = host_stream(gw, "cam-ch1")
        assert stream.tracker.repeats == 8 - 1 + 1  # seven VMD repeats, one linedetection
        assert stream.tracker.unmatched_stops == 1
        assert sim.stream_connects == 1
        assert gw.counters("cam-ch1") == {} and gw.counters("cam-ch2") == {}
    await sim.stop()


async def test_keepalives_hold_a_quiet_stream_and_silence_is_caught(tmp_path: Path) -> None:
    """Hikvision has no guaranteed heartbeat: a camera sending ``videoloss inactive``
    every half second is alive; one sending nothing at all is caught at ``silence``."""
    chatty = HikvisionSim(keepalive=0.5)
    mute = HikvisionSim()
    await chatty.start()
    await mute.start()
    config = write_config(tmp_path / "gw.yaml", hik("chatty", chatty.port, "silence: 2s")
                          + hik("mute", mute.port, "silence: 2s"))
    async with running(config) as gw:
        await gw.until(lambda: mute.stream_connects >= 3, what="mute reconnected twice")
        assert chatty.stream_connects == 1
        assert gw.status("chatty").state == "online"
        assert host_stream(gw, "chatty").counters["heartbeats"] >= 4
        silent = [err for _, dev, state, err in gw.states if dev == "mute" and state == "offline"]
        assert silent and all(e is not None and e.startswith("stream_silent:") for e in silent)
        assert gw.points("camera_event") == []  # keep-alives are not events
    await chatty.stop()
    await mute.stop()


async def test_access_events_on_the_stream_and_pictures_not_stored(tmp_path: Path) -> None:
    sim = HikvisionSim(basic=True)
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", hik("lobby", sim.port, "auth: basic"))
    async with running(config) as gw:
        await gw.until(lambda: sim.open_streams == 1, what="stream")
        records = [sim.swipe(f"000412345{k}", f"10{k:02d}", picture=True) for k in range(5)]
        sim.broadcast(sim.access_part(records[2]))  # the device repeats a post
        await gw.until(lambda: len(gw.points("access_event")) == 5, what="five swipes")
        await asyncio.sleep(0.3)
        points = gw.points("access_event")
        assert [p.fields["serial"] for p in points] == [r["serialNo"] for r in records]
        assert [p.fields["card"] for p in points] == [r["cardNo"] for r in records]
        # minor 1: card verified (docs/schema.md's access-event contract)
        assert all(p.tags["kind"] == "card" and p.tags["result"] == "granted"
                   and p.fields["sub_event"] == 1 for p in points)
        assert [p.fields["event_id"] for p in points] == [str(r["serialNo"]) for r in records]
        # device time, whole second, plus the serial as milliseconds: unique, repeatable
        assert [p.time_ns % 1_000_000_000 for p in points] == [
            r["serialNo"] % 1000 * 1_000_000 for r in records]
        stream = host_stream(gw, "lobby")
        assert stream.counters["pictures"] == 5
        assert stream.counters["picture_bytes"] == 5 * len(JPEG)
        assert gw.counters("lobby") == {"duplicate": 1}  # the repeated post, by serialNo
        assert sim.guard.accepted >= 1
    await sim.stop()


async def test_an_html_answer_is_a_bad_answer_and_codes_match_any_case(tmp_path: Path) -> None:
    portal, cam = HikvisionSim(), HikvisionSim()
    portal.login_page = True
    await portal.start()
    await cam.start()
    config = write_config(tmp_path / "gw.yaml", hik("portal", portal.port)
                          + hik("cam", cam.port, "events: [vmd]"))
    async with running(config) as gw:
        status = gw.status("portal")
        await gw.until(lambda: status.state == "error", what="bad answer")
        assert (status.last_error or "").startswith("bad_answer: ")
        assert "not a multipart stream" in (status.last_error or "")
        await gw.until(lambda: cam.open_streams == 1, what="stream")
        cam.alert("VMD")  # older firmware's spelling of vmd
        cam.alert("linedetection")  # not listed: not stored
        await gw.until(lambda: gw.points("camera_event", "cam"), what="the vmd event")
        await asyncio.sleep(0.3)
        assert [p.tags["event"] for p in gw.points("camera_event", "cam")] == ["VMD"]
    await portal.stop()
    await cam.stop()
