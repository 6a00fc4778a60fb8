"""JSON nested 100,000 deep from a device is a bad part, never a dead task.

Found by the outside probe: ``json.loads`` raises ``RecursionError`` (not a
``ValueError``) for 100,000 ``[``; in a Dahua ``data=``, a Hikvision JSON part or the
AcsEvent answer it escaped the parsers, the stream and backfill tasks failed and were
restarted, the device went to ``error`` and the valid event sent right after the bad
part was lost every time. Now each is counted ``bad_json``, logged once, and the stream
goes on. Real gateway, the project's simulators on loopback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from drivers.event_stream.events import PARSERS, BadPart
from drivers.event_stream.multipart import Part
from drivers.event_stream.position import Position
from drivers.event_stream.sim import DahuaSim, HikvisionSim, part
from drivers.event_stream.tests.harness import Running, running, write_config

DEEP = b"[" * 100_000


def failures(gw: Running) -> tuple[dict[str, int], list[str]]:
    supervisor = gw.gateway.supervisor
    assert supervisor is not None
    return dict(supervisor.restarts), sorted(supervisor.failing)


@pytest.mark.parametrize(("profile", "content_type", "body"), [
    ("dahua", "text/plain", b"Code=AccessControl;action=Pulse;index=0;data=" + DEEP),
    ("hikvision", "application/json", b'{"EventNotificationAlert": ' + DEEP),
    ("hikvision", "application/json", DEEP),
    # parses, but a card number nested 20 deep is no card number
    ("hikvision", "application/json",
     b'{"eventType": "AccessControllerEvent", "AccessControllerEvent": {"cardNo": '
     + b"[" * 20 + b"]" * 20 + b"}}"),
])
def test_deep_json_in_a_part_is_a_bad_part(profile: str, content_type: str,
                                           body: bytes) -> None:
    with pytest.raises(BadPart) as caught:
        PARSERS[profile](Part({"content-type": content_type}, body))
    assert caught.value.kind in ("bad_json", "bad_value")


def test_a_deep_position_file_is_a_damaged_one(tmp_path: Path) -> None:
    (tmp_path / "event_stream").mkdir()
    (tmp_path / "event_stream" / "lobby.json").write_bytes(DEEP)
    position = Position.load(tmp_path, "lobby")
    assert position.load_error is not None and position.time_ns is None


async def test_deep_dahua_data_is_counted_and_the_next_event_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="iotgw")
    sim = DahuaSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", (
        f"- {{id: nvr, driver: event_stream, profile: dahua, host: 127.0.0.1, "
        f"port: {sim.port}, username: admin, password: dahua-pass, heartbeat: 1, "
        f"reconnect_max: 1s}}\n"))
    try:
        async with running(config) as gw:
            await gw.until(lambda: sim.open_streams == 1, what="stream open")
            await gw.until(lambda: gw.status("nvr").state == "online", what="online")
            for k in range(3):
                sim.broadcast(part(b"Code=AccessControl;action=Pulse;index=0;data=" + DEEP,
                                   "text/plain", sim.BOUNDARY))
                sim.event("VideoMotion", "Start", k)  # right after the bad part
            await gw.until(lambda: len(gw.points("camera_event")) == 3,
                           what="every event after a bad part")
            assert gw.counters("nvr") == {"bad_json": 3}
            assert sim.stream_connects == 1
            assert gw.status("nvr").state == "online"
            assert failures(gw) == ({}, [])
    finally:
        await sim.stop()
    lines = [r for r in caplog.records if "bad_json" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


async def test_deep_hikvision_part_and_backfill_answer_lose_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="iotgw")
    sim = HikvisionSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", (
        f"- {{id: lobby, driver: event_stream, profile: hikvision, host: 127.0.0.1, "
        f"port: {sim.port}, username: admin, password: hik-pass, reconnect_max: 1s, "
        f"backfill: true}}\n"))
    try:
        async with running(config) as gw:
            await gw.until(lambda: sim.open_streams == 1, what="stream open")
            sent = []
            for k in range(3):
                sim.broadcast(part(b'{"EventNotificationAlert": ' + DEEP, "application/json",
                                   sim.BOUNDARY))
                sent.append(sim.swipe(f"00041234{k}", f"10{k}")["serialNo"])
            await gw.until(lambda: len(gw.points("access_event")) == 3,
                           what="every swipe after a bad part")
            assert gw.counters("lobby") == {"bad_json": 3}
            # The terminal answers its event-log search with the same poison: the
            # backfill fails (retried at the next connect), nothing else does.
            sim.acs_answer = b'{"AcsEvent": ' + DEEP + b"}"
            searches = len(sim.searches)
            sim.close_streams()
            await gw.until(lambda: len(sim.searches) > searches, what="a backfill search")
            await gw.until(lambda: gw.counters("lobby").get("backfill_failed"),
                           what="the failed backfill")
            await gw.until(lambda: sim.open_streams == 1, what="stream open again")
            sent.append(sim.swipe("000412349", "109")["serialNo"])
            await gw.until(lambda: len(gw.points("access_event")) == 4, what="the next swipe")
            assert [p.fields["serial"] for p in gw.points("access_event")] == sent
            assert gw.counters("lobby") == {"bad_json": 4, "backfill_failed": 1}
            assert gw.status("lobby").state == "online"
            assert failures(gw) == ({}, [])
            # A sane answer again: the next connect's backfill works.
            sim.acs_answer = None
            missed = sim.swipe("000412350", "110", on_stream=False)["serialNo"]
            sim.close_streams()
            await gw.until(lambda: len(gw.points("access_event")) == 5, what="backfilled")
            assert gw.points("access_event")[-1].fields["serial"] == missed
    finally:
        await sim.stop()
    parts = [r for r in caplog.records if "malformed part (bad_json)" in r.getMessage()]
    backfill = [r for r in caplog.records if "backfill of lobby failed" in r.getMessage()]
    assert len(parts) == 1 and len(backfill) == 1
    assert not [r for r in caplog.records if r.exc_info is not None]
