"""Cameras and terminals end to end through the real ``iotgw run`` process: simulated
Hikvision terminal, Dahua camera and RTSP/ONVIF camera on loopback, a file sink and
VictoriaMetrics (the session fixture), a kill -9 of the gateway in the middle."""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
from pathlib import Path

from drivers.camera_health.sim import OnvifSim, RtspSim
from drivers.event_stream.sim import DahuaSim, HikvisionSim
from drivers.event_stream.tests.harness import read_points
from tests.e2e import wait_drained
from tests.gwproc import GatewayProcess
from tests.support.servers import VictoriaMetrics

CARD = "0009{:06d}"


def config_text(tmp_path: Path, victoria: VictoriaMetrics, hik: int, dahua: int, rtsp: int,
                onvif: int) -> str:
    key = tmp_path / "pseudonym.key"
    key.write_text("k" * 32)
    return textwrap.dedent(f"""\
        gateway: {{id: gw-cam, site: cam-site, data_dir: data}}
        buffer: {{flush_interval: 50ms}}
        privacy: {{key_file: {key}}}
        sinks:
          - {{type: file}}
          - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}
        devices:
          - {{id: e2e-lobby, driver: event_stream, profile: hikvision, host: 127.0.0.1,
             port: {hik}, username: admin, password: hik-pass, backfill: true,
             reconnect_max: 1s, pseudonymize: [card], tags: {{building: "3"}}}}
          - {{id: e2e-nvr, driver: event_stream, profile: dahua, host: 127.0.0.1, port: {dahua},
             username: admin, password: dahua-pass, heartbeat: 1}}
          - {{id: e2e-cam, driver: camera_health, host: 127.0.0.1, rtsp_port: {rtsp},
             rtsp_path: /Streaming/Channels/101, username: admin, password: cam-pass,
             onvif: true, onvif_port: {onvif}, interval: 1s}}
        """)


async def wait_for(predicate: object, timeout: float = 60.0, what: str = "") -> None:  # noqa: ASYNC109
    """Hang guard only."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} never came")


def file_serials(data_dir: Path) -> set[int]:
    return {int(p.fields["serial"]) for p in read_points(data_dir)
            if p.measurement == "access_event" and p.tags.get("device") == "e2e-lobby"}


async def test_terminal_camera_and_health_through_a_killed_gateway_into_victoriametrics(
        tmp_path: Path, victoria: VictoriaMetrics) -> None:
    hik, dahua, rtsp, onvif = HikvisionSim(), DahuaSim(), RtspSim(), OnvifSim(skew=-42.0)
    for server in (hik, dahua, rtsp, onvif):
        await server.start()
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(tmp_path, victoria, hik.port, dahua.port, rtsp.port,
                                  onvif.port))
    data_dir = tmp_path / "data"
    gw = GatewayProcess(config).start()
    try:
        await asyncio.to_thread(gw.wait_for_log, lambda r: "running" in r["msg"])
        await wait_for(lambda: hik.open_streams == 1 and dahua.open_streams == 1,
                       what="streams")
        live = [hik.swipe(CARD.format(k), "1001")["serialNo"] for k in range(5)]
        dahua.event("VideoMotion", "Start", 0)
        dahua.event("VideoMotion", "Stop", 0)
        await wait_for(lambda: file_serials(data_dir) == set(live), what="live swipes")
        await asyncio.sleep(0.5)  # the position is saved after the commit
        gw.kill()  # kill -9: no shutdown, no final flush
        missed = []
        for k in range(100):  # swipes while the gateway is dead, in device time
            hik.clock_offset += 2.0
            missed.append(hik.swipe(CARD.format(100 + k), "1002", on_stream=False)
                          ["serialNo"])
        gw = GatewayProcess(config).start()
        await asyncio.to_thread(gw.wait_for_log, lambda r: "running" in r["msg"])
        await wait_for(lambda: file_serials(data_dir) >= set(live + missed),
                       what="backfilled after the crash")
        await wait_for(lambda: sum(p.measurement == "camera_health" and
                                   p.tags.get("probe") == "rtsp"
                                   for p in read_points(data_dir)) >= 2, what="probes")
        assert (data_dir / "event_stream" / "e2e-lobby.json").exists()
        await asyncio.to_thread(wait_drained, data_dir / "buffer.db", ["file", "vm"])
        assert gw.stop() == 0
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.kill()
        for server in (hik, dahua, rtsp, onvif):
            await server.stop()

    # The store: every swipe once (a resend after the kill overwrites the same point),
    # the card pseudonymised everywhere, camera health and events beside them.
    rows = await asyncio.to_thread(victoria.export, '{__name__="access_event_serial"}')
    assert len(rows) == 1
    row = rows[0]
    assert sorted(row["values"]) == sorted(float(s) for s in live + missed)
    assert len(row["timestamps"]) == len(set(row["timestamps"])) == 105
    assert row["metric"]["device"] == "e2e-lobby" and row["metric"]["building"] == "3"
    health = await asyncio.to_thread(victoria.export, '{__name__="camera_health_skew_s"}')
    assert health and all(abs(v + 42.0) <= 2.0 for v in health[0]["values"])
    motion = await asyncio.to_thread(victoria.export, '{__name__="camera_event_active"}')
    assert [r["metric"]["device"] for r in motion] == ["e2e-nvr"]
    assert motion[0]["values"] == [1.0, 0.0]
    cards = {p.fields.get("card") for p in read_points(data_dir)
             if p.measurement == "access_event"}
    assert all(isinstance(c, str) and len(c) == 16 for c in cards)
    # The card number as a token of its own: inside a longer run of digits it is part of a
    # nanosecond timestamp ("...1764304321009000000" holds "0009000000"), not a card.
    raw_card = re.compile(rb"(?<![0-9])" + CARD.format(0).encode() + rb"(?![0-9])")
    for path in data_dir.rglob("*"):
        if path.is_file() and path.suffix in (".lp", ".db", ".json"):
            raw = path.read_bytes()
            assert raw_card.search(raw) is None, f"raw card number in {path}"
    assert "hik-pass" not in "".join(gw.raw)
