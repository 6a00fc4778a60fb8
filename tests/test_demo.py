"""``iotgw demo``: the simulated compound, run as a real subprocess.

Modbus TCP servers, an RS-485 pty with DL/T 645 and CJ/T 188 meters, a card reader pty
and (with a broker) an MQTT plate camera, through the real drivers into the real buffer
and sinks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.support.servers import Mosquitto, VictoriaMetrics
from tests.support.wait import eventually_sync

CARDS = ["0004123456", "0004123457", "0007765432", "0001000099"]


def demo(data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "demo", "--no-view", "--data-dir", str(data_dir),
            *extra]


def parse_lines(data_dir: Path) -> list[tuple[str, dict[str, str], str]]:
    """(measurement, tags, fields text) of every line the file sink wrote."""
    out = []
    for path in sorted((data_dir / "lines").glob("*.lp")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            head, fields, _ = line.rsplit(" ", 2)
            measurement, *tags = head.split(",")
            out.append((measurement, dict(t.split("=", 1) for t in tags), fields))
    return out


def assert_no_raw_cards(data_dir: Path) -> None:
    for path in data_dir.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            for card in CARDS:
                assert card.encode() not in raw, f"raw card number {card} in {path}"


def test_demo_runs_every_device_type_into_the_file_sink(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    proc = subprocess.run(demo(data_dir, "--duration", "32", "--swipe-every", "2"),
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "demo stopped" in proc.stdout
    lines = parse_lines(data_dir)
    by_driver = Counter((m, t["device"]) for m, t, _ in lines)

    energy = {d for (m, d) in by_driver if m == "energy_meter"}
    # Modbus TCP (both profiles) and DL/T 645 on the RS-485 line
    assert {"b1-main-meter", "b1-flat-101", "b1-flat-102", "b2-main-meter"} <= energy
    assert {"b3-meter-0301", "b3-meter-0302"} <= energy
    assert {d for (m, d) in by_driver if m == "water_meter"} == {"b3-water-0301",
                                                                 "b3-water-0302",
                                                                 "b2-water-101"}
    access = [(t, f) for m, t, f in lines if m == "access_event"
              and t["device"] == "gate-north-reader"]
    assert len(access) >= 3
    for tags, fields in access:
        assert tags["device"] == "gate-north-reader" and tags["direction"] in ("IN", "OUT")
        card = fields.split("card=", 1)[1].split(",", 1)[0].strip('"')
        assert len(card) == 16 and all(c in "0123456789abcdef" for c in card), fields
    assert_no_raw_cards(data_dir)

    # alarms: the Modbus water meter starts leaking, the east door is held open
    alarms = {(t["rule"], t["device"]): f for m, t, f in lines if m == "alarm"}
    assert set(alarms) == {("demo-water-leak", "b2-water-101"),
                           ("demo-door-held-open", "b1-door-east")}, alarms
    assert all('state="active_unacked"' in f and "seq=1i" in f for f in alarms.values())
    doors = [f for m, t, f in lines if m == "access_event" and t["device"] == "b1-door-east"]
    assert doors[0] == 'event="door_open"'

    # plausible values; energy counters never run backwards
    sdm = [f for m, t, f in lines if t["device"] == "b1-main-meter"]
    assert "voltage_l1=2" in sdm[0] and "energy_import=" in sdm[0]

    def energy_of(device: str, field: str) -> list[float]:
        values = []
        for _, tags, text in lines:
            fields = dict(pair.split("=", 1) for pair in text.split(","))
            if tags["device"] == device and field in fields:
                values.append(float(fields[field].rstrip("i")))
        return values

    for device, field in (("b1-flat-101", "energy_import"), ("b3-meter-0301", "energy_total"),
                          ("b3-water-0301", "total")):
        values = energy_of(device, field)
        assert len(values) >= 2 and values == sorted(values) and values[-1] > values[0], \
            (device, values)
    assert (data_dir / "pseudonym.key").stat().st_mode & 0o077 == 0


def test_demo_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    proc = subprocess.Popen(demo(data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        current = data_dir / "lines" / "current.lp"
        eventually_sync(lambda: current.exists()
                        and "water_meter" in current.read_text(encoding="utf-8"),
                        within=30, every=0.2, what="readings from every meter type")
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped:" in err and "demo stopped" in out


def test_demo_with_broker_and_store(tmp_path: Path, mosquitto: Mosquitto,
                                   victoria: VictoriaMetrics) -> None:
    """--mqtt-host adds the plate camera (and the ops bus); --influx-url replaces the file
    sink (VictoriaMetrics speaks the InfluxDB write API)."""
    data_dir = tmp_path / "demo"
    password_file = tmp_path / "mqtt-password"  # as docker-compose passes it (a secret)
    password_file.write_text(mosquitto.users["gw"] + "\n")
    proc = subprocess.run(demo(data_dir, "--duration", "15",
                               "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port),
                               "--mqtt-username", "gw", "--mqtt-password-file",
                               str(password_file), "--health-listen", "127.0.0.1:0",
                               "--influx-url", victoria.url, "--influx-token", "t",
                               "--influx-bucket", "demo"),
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vehicle_event" in proc.stdout
    assert not (data_dir / "lines").exists()
    config = (data_dir / "demo-gateway.yaml").read_text(encoding="utf-8")
    assert mosquitto.users["gw"] not in config  # secrets stay out of the written config
    eventually_sync(lambda: {key[0] for key in victoria.samples(
        '{__name__=~"vehicle_event_confidence|water_meter_total",site="demo-compound"}')},
        until=lambda names: names == {"vehicle_event_confidence", "water_meter_total"},
        within=20, every=0.5, what="every measurement in VictoriaMetrics")


async def test_live_view_lists_and_acknowledges_alarms() -> None:
    """The view's alarm block and its `a` key (acknowledge all), on the AlarmService
    contract (the subprocess test above shows the real engine raising them)."""
    from types import SimpleNamespace

    from demo.view import OPERATOR, View
    from gateway.alarms.model import AlarmState
    from tests.support.alarms import FakeAlarms

    fake = FakeAlarms()
    fake.set("demo-water-leak", "b2-water-101", AlarmState.ACTIVE_UNACKED, "raise",
             message="water has not stopped")
    fake.set("demo-door-held-open", "b1-door-east", AlarmState.CLEARED_UNACKED, "clear")
    fake.set("mains-loss", "b1-flat-101", AlarmState.ACTIVE_ACKED, "raise")
    view = View(SimpleNamespace(alarms=fake), None, None)
    block = "\n".join(view._alarms(160))
    assert "3 not normal, 2 unacknowledged" in block and "water has not stopped" in block
    assert await view.acknowledge_all() == 2
    assert {(c.rule, c.client) for c in fake.commands} == {
        ("demo-water-leak", OPERATOR), ("demo-door-held-open", OPERATOR)}
    assert [str(a.state) for a in fake.alarms()] == ["active_acked", "normal", "active_acked"]
