"""A stream that connects and then says nothing, again and again, is logged once.
Found by the outside probe: a server that accepted the stream and then only dripped
bytes (or nothing) produced a WARNING stream_silent and an INFO "stream connected" every
silence period, forever. Real gateway, the project's Dahua simulator on loopback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from drivers.event_stream.sim import DahuaSim
from drivers.event_stream.tests.harness import running, write_config


async def test_a_stream_that_keeps_going_silent_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="iotgw.event_stream")
    sim = DahuaSim()
    sim.silent = True
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", (
        f"- {{id: nvr, driver: event_stream, profile: dahua, host: 127.0.0.1, "
        f"port: {sim.port}, username: admin, password: dahua-pass, heartbeat: 1, "
        f"silence: 1.2s, reconnect_max: 1s}}\n"))
    try:
        async with running(config) as gw:
            await gw.until(lambda: sim.stream_connects >= 4, what="four silent connects")
            silent = [r for r in caplog.records if "stream_silent" in r.getMessage()]
            connected = [r for r in caplog.records if "stream connected" in r.getMessage()]
            assert len(silent) == 1 and connected == []
            # ... and when it talks again for real, the recovery is logged once
            sim.silent = False
            await gw.until(lambda: any("stream connected" in r.getMessage()
                                       for r in caplog.records), what="the recovery line")
            assert str(gw.status("nvr").state) == "online"
    finally:
        await sim.stop()
