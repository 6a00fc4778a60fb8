"""camera_health through a real gateway (in-process, file sink) against simulated cameras:
an RTSP server (OPTIONS/DESCRIBE, Digest or Basic, 401/404) and an ONVIF endpoint with a
skewed clock, real servers on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.camera_health.onvif import parse_utc
from drivers.camera_health.sim import OnvifSim, RtspSim
from drivers.event_stream.conditions import BadAnswer
from drivers.event_stream.tests.harness import Running, running, write_config
from gateway.health.metrics import render
from gateway.health.snapshot import collect
from gateway.health.statustable import format_status
from tests.support.mqtt import retained
from tests.support.servers import Mosquitto, free_port

PATH = "/Streaming/Channels/101"


def camera(device_id: str, rtsp_port: int, extra: str = "", password: str = "cam-pass") -> str:
    return (f"- {{id: {device_id}, driver: camera_health, host: 127.0.0.1, "
            f"rtsp_port: {rtsp_port}, rtsp_path: {PATH}, username: admin, "
            f"password: {password}, interval: 1s, timeout: 1s"
            f"{', ' + extra if extra else ''}}}\n")


def latest(gw: Running, device_id: str) -> dict[str, object]:
    points = gw.points("camera_health", device_id)
    return dict(points[-1].fields) if points else {}


async def test_conditions_are_told_apart(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    digest, basic = RtspSim(), RtspSim(scheme="basic", options_auth=True)
    onvif = OnvifSim(skew=123.0)
    for server in (digest, basic, onvif):
        await server.start()
    dead = free_port()
    config = write_config(tmp_path / "gw.yaml",
                          camera("up", digest.port, f"onvif: true, onvif_port: {onvif.port}, "
                                 "max_skew: 60s")
                          + camera("basic", basic.port, "rtsp_auth: basic")
                          + camera("wrong-pass", digest.port, password="Not-The-Pass-99")
                          + camera("wrong-path", digest.port).replace(PATH, "/live/ch9")
                          + camera("gone", dead))
    async with running(config) as gw:
        ids = ("up", "basic", "wrong-pass", "wrong-path", "gone")
        await gw.until(lambda: all(len(gw.points("camera_health", d)) >= 2 for d in ids),
                       what="two probes each")
        states = {d: (str(gw.status(d).state), (gw.status(d).last_error or "").split(":")[0])
                  for d in ids}
        assert states == {"up": ("online", ""), "basic": ("online", ""),
                          "wrong-pass": ("error", "auth_failed"),
                          "wrong-path": ("error", "bad_answer"),
                          "gone": ("offline", "unreachable")}
        assert "404" in (gw.status("wrong-path").last_error or "")
        assert {d: gw.status(d).condition for d in ids} == {
            "up": "up", "basic": "up", "wrong-pass": "auth_failed",
            "wrong-path": "bad_answer", "gone": "unreachable"}
        # The same word in /status, the metrics and the `iotgw status` table.
        snap = await collect(gw.gateway)
        assert snap["devices"]["wrong-pass"]["condition"] == "auth_failed"
        metrics = render(snap).decode()
        assert 'iotgw_device_condition{condition="auth_failed",device="wrong-pass"} 1.0' in metrics
        assert 'iotgw_device_condition{condition="unreachable",device="gone"} 1.0' in metrics
        table = format_status(snap)
        assert "offline (unreachable)" in table and "error (auth_failed)" in table
        up = latest(gw, "up")
        assert up["up"] == 1 and up["condition"] == "up"
        assert isinstance(up["rtt_ms"], float) and up["rtt_ms"] >= 0
        assert isinstance(up["skew_s"], float) and abs(up["skew_s"] - 123.0) <= 2.0
        assert gw.counters("up").get("clock_skew", 0) >= 1
        refused = latest(gw, "wrong-pass")
        assert refused["up"] == 0 and refused["condition"] == "auth_failed"
        assert isinstance(refused["rtt_ms"], float)  # it answered: connected, then 401
        assert latest(gw, "gone") == {"up": 0, "condition": "unreachable"}
        # alive-but-refusing has a last-seen; unreachable has none
        assert gw.status("wrong-pass").last_seen is not None
        assert gw.status("gone").last_seen is None
        assert onvif.requests >= 2
    assert "Not-The-Pass-99" not in caplog.text
    # one log line per condition, not one per probe
    assert sum("wrong-pass: auth_failed" in r.getMessage() for r in caplog.records) == 1
    for server in (digest, basic, onvif):
        await server.stop()


async def test_offline_camera_comes_back_and_keeps_its_last_seen(tmp_path: Path) -> None:
    sim = RtspSim()
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", camera("cam", sim.port))
    async with running(config) as gw:
        status = gw.status("cam")
        await gw.until(lambda: status.state == "online", what="up")
        await sim.stop()  # reboot / cable pulled
        await gw.until(lambda: status.state == "offline", what="offline")
        seen = status.last_seen
        assert seen is not None
        await asyncio.sleep(1.5)  # more failed probes: last-seen must not move
        assert status.last_seen == seen
        assert latest(gw, "cam") == {"up": 0, "condition": "unreachable"}
        await sim.start()
        await gw.until(lambda: status.state == "online", what="back")
        assert status.last_seen is not None and status.last_seen > seen
        sim.hang = True  # accepts TCP, never answers: a hung firmware
        await gw.until(lambda: status.state == "offline", what="hung")
        assert "no RTSP answer" in (status.last_error or "")
        conditions = [p.fields["condition"] for p in gw.points("camera_health", "cam")]
        assert conditions[0] == "up" and "unreachable" in conditions
    await sim.stop()


def test_onvif_answers_are_parsed_without_trusting_them() -> None:
    body = (b'<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope"><Body>'
            b"<GetSystemDateAndTimeResponse><SystemDateAndTime><UTCDateTime>"
            b"<Date><Year>2026</Year><Month>11</Month><Day>28</Day></Date>"
            b"<Time><Hour>9</Hour><Minute>5</Minute><Second>3</Second></Time>"
            b"</UTCDateTime></SystemDateAndTime></GetSystemDateAndTimeResponse></Body>"
            b"</Envelope>")
    assert parse_utc(body) == 1795856703.0
    for bad in (b"", b"<Envelope/>", body.replace(b"<Month>11", b"<Month>13"),
                body.replace(b"<Hour>9</Hour>", b"<Hour/>"),
                b'<!DOCTYPE x [<!ENTITY e "e">]><Envelope>&e;</Envelope>',
                b"<Envelope>" + b"<a>" * 100_000 + b"</a>" * 100_000 + b"</Envelope>"):
        with pytest.raises(BadAnswer):
            parse_utc(bad)


async def test_conditions_on_the_ops_bus_state_topic(tmp_path: Path,
                                                     mosquitto: Mosquitto) -> None:
    """The same retained ``devices/<id>/state`` every device has, condition first in
    ``last_error``, and the reading on the live values topic."""
    sim = RtspSim()
    await sim.start()
    dead = free_port()
    mqtt = (f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, username: gw, "
            f"password: {mosquitto.users['gw']}, base_topic: compound/cams/gw}}\n")
    config = write_config(tmp_path / "gw.yaml",
                          camera("cam-up", sim.port) + camera("cam-refused", sim.port,
                                                              password="nope-nope")
                          + camera("cam-gone", dead), extra=mqtt)
    async with running(config) as gw:
        await gw.until(lambda: all(gw.points("camera_health", d) for d in
                                   ("cam-up", "cam-refused", "cam-gone")), what="probes")
        states = {}
        for device in ("cam-up", "cam-refused", "cam-gone"):
            body = await asyncio.to_thread(retained, mosquitto,
                                           f"compound/cams/gw/devices/{device}/state")
            states[device] = json.loads(body)
        values = await asyncio.to_thread(retained_or_live, mosquitto,
                                         "compound/cams/gw/devices/cam-gone/values")
    assert states["cam-up"]["state"] == "online" and states["cam-up"]["last_error"] is None
    assert states["cam-refused"]["state"] == "error"
    assert states["cam-refused"]["last_error"].startswith("auth_failed: ")
    assert states["cam-refused"]["last_seen"] is not None  # it answered
    assert states["cam-gone"]["state"] == "offline"
    assert states["cam-gone"]["last_error"].startswith("unreachable: ")
    assert states["cam-gone"]["last_seen"] is None
    assert {d: s["condition"] for d, s in states.items()} == {
        "cam-up": "up", "cam-refused": "auth_failed", "cam-gone": "unreachable"}
    assert "nope-nope" not in json.dumps(states)
    assert values["measurement"] == "camera_health" and values["fields"]["up"] == 0
    await sim.stop()


def retained_or_live(broker: Mosquitto, topic: str, timeout: float = 20.0) -> dict[str, Any]:
    """The first message on ``topic`` (live values are not retained)."""
    got: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.username_pw_set("ops", broker.users["ops"])
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topic, 0)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got, f"nothing on {topic}"
    body: dict[str, Any] = json.loads(got[0])
    return body


async def test_a_basic_challenge_gets_no_password_unless_configured(tmp_path: Path) -> None:
    """Found by the outside probe: whatever answers on the camera's RTSP port chooses the
    scheme; asking for Basic got the password in clear (base64) over plain RTSP. Now a
    Basic challenge is auth_failed and nothing is sent, unless ``rtsp_auth: basic``."""
    hostile = RtspSim(scheme="basic", options_auth=True)
    await hostile.start()
    config = write_config(tmp_path / "gw.yaml", camera("cam", hostile.port))
    async with running(config) as gw:
        await gw.until(lambda: len(gw.points("camera_health", "cam")) >= 2,
                       what="two probes")
        assert str(gw.status("cam").state) == "error"
        assert (gw.status("cam").last_error or "").startswith("auth_failed")
        assert "rtsp_auth: basic" in (gw.status("cam").last_error or "")
        assert latest(gw, "cam")["condition"] == "auth_failed"
    assert hostile.requests and hostile.authorizations == []
    await hostile.stop()


@pytest.mark.parametrize("misbehave", ["garbage", "hugeline"])
async def test_an_answer_that_is_no_rtsp_is_a_bad_answer(tmp_path: Path,
                                                         misbehave: str) -> None:
    """Found by the outside probe: binary garbage or a line longer than the reader's
    limit on the RTSP port was ``unreachable`` (``connection lost: IncompleteReadError`` /
    ``LimitOverrunError``). Something answered there, wrongly: ``bad_answer``, and the
    camera (or whatever holds its address) was heard from."""
    sim = RtspSim()
    sim.misbehave = misbehave
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", camera("cam", sim.port))
    async with running(config) as gw:
        await gw.until(lambda: len(gw.points("camera_health", "cam")) >= 2, what="probes")
        status = gw.status("cam")
        assert (str(status.state), status.condition) == ("error", "bad_answer")
        assert (status.last_error or "").startswith("bad_answer: ")
        assert "not an RTSP answer" in (status.last_error or "")
        assert status.last_seen is not None
        assert latest(gw, "cam")["condition"] == "bad_answer"
        sim.misbehave = None  # the camera's own firmware again
        await gw.until(lambda: status.state == "online", what="up again")
    await sim.stop()
