"""Dahua eventManager streams through a real gateway (in-process, file sink) against the
simulated device (a real aiohttp server with Digest auth on loopback)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from drivers.event_stream.sim import DahuaSim, part
from drivers.event_stream.tests.harness import Running, running, write_config
from tests.support.servers import free_port

HEARTBEAT = 1


def dahua(device_id: str, port: int, password: str = "dahua-pass", extra: str = "") -> str:
    return (f"- {{id: {device_id}, driver: event_stream, profile: dahua, host: 127.0.0.1, "
            f"port: {port}, username: admin, password: {password}, heartbeat: {HEARTBEAT}, "
            f"reconnect_max: 1s{', ' + extra if extra else ''}}}\n")


def states_of(gw: Running, device_id: str) -> list[str]:
    return [state for _, dev, state, _ in gw.states if dev == device_id]


async def hold(tmp_path: Path, seconds: float) -> None:
    sim = DahuaSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", dahua("cam", sim.port))
    sent: list[str] = []
    async with running(config) as gw:
        await gw.until(lambda: sim.open_streams == 1, what="stream open")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            action = "Start" if len(sent) % 2 == 0 else "Stop"
            sim.event("VideoMotion", action, index=len(sent) % 3)
            sent.append(action.lower())
            await asyncio.sleep(0.4)
        await gw.until(lambda: len(gw.points("camera_event")) == len(sent), what="all events")
        events = gw.points("camera_event")
        assert [p.fields["action"] for p in events] == sent
        assert [p.tags["channel"] for p in events] == [str(k % 3 + 1) for k in range(len(sent))]
        assert sim.stream_connects == 1, "the stream was reconnected"
        assert states_of(gw, "cam") == ["starting", "online"]
        assert gw.counters("cam") == {}
        # Meaningful only if the run outlasted the silence threshold many times over.
        assert sim.heartbeats > 4 * 2.5
    await sim.stop()


async def test_heartbeating_stream_is_held_without_a_reconnect(tmp_path: Path) -> None:
    await hold(tmp_path, 12.0)


@pytest.mark.soak
async def test_heartbeating_stream_is_held_for_an_hour(tmp_path: Path) -> None:
    await hold(tmp_path, 3600.0)


async def test_silent_stream_is_detected_within_three_heartbeats(tmp_path: Path) -> None:
    sim = DahuaSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", dahua("cam", sim.port))
    async with running(config) as gw:
        await gw.until(lambda: sim.heartbeats >= 3, what="heartbeats")
        first = time.monotonic()
        beats = sim.heartbeats
        await gw.until(lambda: sim.heartbeats >= beats + 3, what="more heartbeats")
        interval = (time.monotonic() - first) / (sim.heartbeats - beats)
        sim.silent = True  # the connection stays open; nothing more is sent
        status = gw.status("cam")
        await gw.until(lambda: status.state == "offline", what="stream_silent")
        assert status.last_error is not None and status.last_error.startswith("stream_silent:")
        assert status.condition == "stream_silent"
        assert status.last_seen is not None
        # Silence is measured from the last part to the moment the state changed.
        ratio = (status.since - status.last_seen) / interval
        assert 2.0 <= ratio <= 3.0, f"detected after {ratio:.2f} heartbeats"
        sim.silent = False
        await gw.until(lambda: status.state == "online", what="back online")
        assert sim.stream_connects == 2
        health = gw.points("camera_health", "cam")
        await gw.until(lambda: len(gw.points("camera_health", "cam")) == 3, what="health")
        health = gw.points("camera_health", "cam")
        assert [(p.fields["up"], p.fields["condition"]) for p in health] == [
            (1, "up"), (0, "stream_silent"), (1, "up")]
        assert gw.counters("cam") == {}
    await sim.stop()


async def test_stream_closed_by_the_device_reconnects_and_loses_nothing_after(
        tmp_path: Path) -> None:
    sim = DahuaSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", dahua("cam", sim.port))
    async with running(config) as gw:
        await gw.until(lambda: sim.open_streams == 1, what="stream open")
        sim.event("CrossLineDetection", "Pulse", 1, {"Name": "gate line"})
        await gw.until(lambda: gw.points("camera_event"), what="first event")
        sim.close_streams()  # newer firmware closes the stream by itself
        status = gw.status("cam")
        await gw.until(lambda: sim.stream_connects == 2 and sim.open_streams == 1,
                       what="reconnected")
        await gw.until(lambda: status.state == "online", what="online again")
        assert "offline" in states_of(gw, "cam")
        reasons = [err for _, dev, state, err in gw.states if dev == "cam" and state == "offline"]
        assert reasons and all(r is not None and r.startswith("unreachable:") and
                               "closed the stream" in r for r in reasons)
        sim.event("CrossLineDetection", "Pulse", 1)
        await gw.until(lambda: len(gw.points("camera_event")) == 2, what="event after")
        assert [p.tags["channel"] for p in gw.points("camera_event")] == ["2", "2"]
    await sim.stop()


async def test_auth_failure_is_kept_apart_from_unreachable(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "wrong-Secret-4711"
    sim = DahuaSim(password="right-pass")
    await sim.start()
    dead = free_port()  # nothing listens there
    config = write_config(tmp_path / "gw.yaml",
                          dahua("cam-auth", sim.port, password=secret)
                          + dahua("cam-gone", dead))
    async with running(config) as gw:
        auth, gone = gw.status("cam-auth"), gw.status("cam-gone")
        await gw.until(lambda: auth.state == "error" and gone.state == "offline",
                       what="both diagnosed")
        assert auth.last_error is not None and auth.last_error.startswith("auth_failed: 401")
        assert gone.last_error is not None and gone.last_error.startswith("unreachable:")
        refused = sim.guard.refused
        # The unreachable one is retried with backoff, the refused one is not hammered.
        await gw.until(lambda: gw.gateway.devices["cam-gone"].status.since > 0 and
                       len([s for s in gw.states if s[1] == "cam-gone"]) >= 2, what="gone")
        await asyncio.sleep(3.0)
        assert sim.guard.refused == refused <= 2  # one challenge, one refused answer
        assert sim.guard.accepted == 0
        health = {p.tags["device"]: p.fields for p in gw.points("camera_health")}
        assert health["cam-auth"] == {"up": 0, "condition": "auth_failed"}
        assert health["cam-gone"] == {"up": 0, "condition": "unreachable"}
    assert secret not in caplog.text
    assert all(secret not in (err or "") for _, _, _, err in gw.states)
    await sim.stop()


async def test_hostile_parts_are_counted_and_never_end_the_stream(tmp_path: Path) -> None:
    sim = DahuaSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", dahua("cam", sim.port, extra="max_part: 4KiB"))
    async with running(config) as gw:
        await gw.until(lambda: sim.open_streams == 1, what="stream open")
        sim.broadcast(b"\x00\xffnot multipart at all\r\n" * 10)
        sim.broadcast(b"--myboundary\r\nContent-Type: text/plain\r\nContent-Length: 9000\r\n\r\n"
                      + b"A" * 9000 + b"\r\n")
        sim.broadcast(b"--myboundary\r\nContent-Type: text/plain\r\n\r\nCode=;action=\r\n")
        sim.event("VideoMotion", "Maybe")
        sim.event("AccessControl", "Pulse", 0, None)
        sim.broadcast(b"--myboundary\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\n"
                      b"Code=AccessControl;action=Pulse;data={\r\n")
        sim.event("VideoMotion", "Start", 1)
        await gw.until(lambda: len(gw.points("camera_event")) == 1, what="the good event")
        counters = gw.counters("cam")
        assert {"garbage", "part_too_large", "bad_event"} <= set(counters), counters
        assert sim.stream_connects == 1
        assert gw.status("cam").state == "online"
        # The AccessControl pulse without data is a valid event of its own.
        assert len(gw.points("access_event")) == 1
    await sim.stop()


async def malformed_burst(gw: Running, sim: DahuaSim, connection: int) -> None:
    """Five good events, each after stray bytes and before a bad index, all with a
    detail of their own; then the device closes the stream."""
    await gw.until(lambda: sim.open_streams == 1, what="stream open")
    for k in range(5):
        sim.broadcast(f"stray bytes number {connection}-{k}\r\n".encode() * (k + 1))
        sim.event("VideoMotion", "Start", k)
        sim.broadcast(part(f"Code=VideoMotion;action=Start;index=x{k}".encode(),
                           "text/plain", sim.BOUNDARY))
    sent = 5 * (connection + 1)
    await gw.until(lambda: len(gw.points("camera_event")) == sent, what="the good events")
    await gw.until(lambda: gw.counters("cam").get("bad_value") == sent, what="bad values")
    sim.close_streams()
    await gw.until(lambda: sim.stream_connects == connection + 2, what="reconnect")


async def test_malformed_parts_are_logged_once_per_kind_whatever_their_detail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the outside probe: the detail text (which bytes, which value) was part of
    the compared message, so ``malformed part (garbage)`` was logged 44 times (10 in one
    connection) and ``bad_value`` 8. Now one line per kind, the first detail in it, the
    repeats counted; across reconnects too."""
    caplog.set_level(logging.INFO, logger="iotgw.event_stream")
    sim = DahuaSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", dahua("cam", sim.port))
    async with running(config) as gw:
        for connection in range(2):
            await malformed_burst(gw, sim, connection)
        counters = gw.counters("cam")
        assert counters["garbage"] >= 10 and counters["bad_value"] == 10
    await sim.stop()
    lines = [r.getMessage() for r in caplog.records if "malformed part" in r.getMessage()]
    assert sorted(line.split("(")[1].split(")")[0] for line in lines) == [
        "bad_value", "garbage"], lines
    bad_value = next(line for line in lines if "(bad_value)" in line)
    assert "'x0'" in bad_value  # the first detail is in the line


async def test_codes_all_goes_on_the_request_line_as_written(tmp_path: Path) -> None:
    """Found by the outside probe: the URL went out as ``codes=%5BAll%5D`` (yarl encodes
    the brackets, and the Digest ``uri=`` matched it), which older Dahua/Amcrest firmware
    answers with 400 (python-amcrest #155, home-assistant/core #33875); the simulator
    now does the same. The request line and the Digest ``uri=`` carry ``[All]``."""
    sim = DahuaSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", dahua("cam", sim.port))
    async with running(config) as gw:
        await gw.until(lambda: gw.status("cam").state == "online", what="online")
        assert sim.stream_connects == 1
    await sim.stop()
    target = f"/cgi-bin/eventManager.cgi?action=attach&codes=[All]&heartbeat={HEARTBEAT}"
    assert sim.requests and set(sim.requests) == {target}  # the 401 round, then ours
    assert sim.guard.accepted == 1  # its Digest uri= is that same text (the sim checks)
