"""A stream that is accepted but never delivers a part never shows the device online.

Found by the outside probe: a server that answered ``200 multipart`` and then sent
nothing, garbage, a byte at a time, or closed at once made the device ``online`` (and a
``camera_health up=1`` reading) on every connect, then ``stream_silent`` at the silence
threshold, again and again; a rule ``device_state != "online"`` with a ``for:`` never
held long enough to raise. Real gateway, the project's simulators on loopback, both
vendor profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.event_stream.sim import DahuaSim, HikvisionSim
from drivers.event_stream.tests.harness import Running, running, write_config

CASES = {
    # misbehaviour: (condition, state)
    "stall": ("stream_silent", "offline"),
    "garbage": ("bad_answer", "error"),
    "drip": ("bad_answer", "error"),
    "close": ("unreachable", "offline"),
}


def device(profile: str, port: int) -> str:
    timing = "heartbeat: 1, silence: 1.2s" if profile == "dahua" else "silence: 1s"
    password = "dahua-pass" if profile == "dahua" else "hik-pass"
    return (f"- {{id: cam, driver: event_stream, profile: {profile}, host: 127.0.0.1, "
            f"port: {port}, username: admin, password: {password}, {timing}, "
            f"reconnect_max: 1s}}\n")


def health(gw: Running) -> list[tuple[object, object]]:
    return [(p.fields["up"], p.fields["condition"]) for p in gw.points("camera_health", "cam")]


@pytest.mark.parametrize("profile", ["dahua", "hikvision"])
@pytest.mark.parametrize("misbehave", sorted(CASES))
async def test_a_stream_without_parts_never_shows_the_device_online(
        tmp_path: Path, profile: str, misbehave: str) -> None:
    condition, state = CASES[misbehave]
    sim: DahuaSim | HikvisionSim = DahuaSim() if profile == "dahua" else HikvisionSim()
    sim.misbehave = misbehave
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", device(profile, sim.port))
    try:
        async with running(config) as gw:
            status = gw.status("cam")
            await gw.until(lambda: sim.stream_connects >= 3, what="three accepted connects")
            await gw.until(lambda: health(gw), what="a health reading")
            assert "online" not in [s for _, dev, s, _ in gw.states if dev == "cam"]
            assert str(status.state) == state and status.condition == condition
            assert (status.last_error or "").startswith(f"{condition}: ")
            if misbehave == "close":
                assert "before sending a part" in (status.last_error or "")
            assert set(health(gw)) == {(0, condition)}
            # A device that starts talking is up at its first part, and said so once.
            if isinstance(sim, HikvisionSim):
                sim.keepalive = 0.3
            sim.misbehave = None
            await gw.until(lambda: str(status.state) == "online", what="online")
            await gw.until(lambda: health(gw)[-1] == (1, "up"), what="the up reading")
            assert [h for h in health(gw) if h[0] == 1] == [(1, "up")]
    finally:
        await sim.stop()
