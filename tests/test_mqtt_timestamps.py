"""Timestamps from MQTT devices, end to end (found by an outside probe, issue 10):

* a device time outside int64 nanoseconds ("9999-12-31T23:59:59Z", Go's zero time) used
  to make the commit raise OverflowError: every device's commits stopped, the queued
  readings were lost at shutdown, and the unacknowledged message came back after a
  restart to do it again. Now it is counted ``bad_time`` and the arrival time is used;
* a burst of messages without a time of their own shared one arrival time, so InfluxDB
  (one point per series and timestamp) kept 1 of 200 without a word.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from tests.gwproc import GatewayProcess
from tests.support.files import file_lines
from tests.support.mqtt import connect, mqtt_config
from tests.support.servers import InfluxDB1, Mosquitto
from tests.support.wait import eventually_sync

BASE = "compound/stamps/gw"


def test_device_time_out_of_range_costs_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = tmp_path / "gw.yaml"
    mqtt_config(config, mosquitto, base=BASE, tls=False, extra_mqtt="  stats_interval: 0.5s\n",
                sinks="  - {type: file, name: local}\n", devices=(
                    '  - {id: room-t, driver: mqtt, topic: "compound/stamps/+room", '
                    'measurement: stamps_room, time: $.ts, fields: {v: $.v}}\n'
                    "  - {id: ticker, driver: synthetic, measurement: stamps_tick, "
                    "interval: 20ms}\n"))
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
    sender = connect(mosquitto, client_id="stamps-sender")
    now = int(time.time())
    try:
        payloads = [{"v": 1, "ts": now - 5}, {"v": 2, "ts": "9999-12-31T23:59:59Z"},
                    {"v": 3, "ts": "0001-01-01T00:00:00Z"}, {"v": 4, "ts": "1600-01-01"},
                    {"v": 5, "ts": now - 4}]
        for payload in payloads:
            sender.publish("compound/stamps/r1", json.dumps(payload), qos=1).wait_for_publish(10)

        def stored() -> list[bytes]:
            lines = [ln for ln in file_lines(tmp_path / "data") if ln.startswith(b"stamps_room")]
            return lines if len(lines) >= 5 else []

        lines = eventually_sync(stored, within=30, what="every message committed")
        stamps = {int(ln.split(b"v=")[1].split(b" ")[0].rstrip(b"i")): int(ln.rsplit(b" ", 1)[1])
                  for ln in lines}
        assert sorted(stamps) == [1, 2, 3, 4, 5] and len(lines) == 5
        assert stamps[1] == (now - 5) * 10**9 and stamps[5] == (now - 4) * 10**9
        assert all(abs(stamps[v] - time.time_ns()) < 60 * 10**9 for v in (2, 3, 4)), \
            "an unusable device time falls back to the arrival time"
        ticks = len([ln for ln in file_lines(tmp_path / "data") if ln.startswith(b"stamps_tick")])
        eventually_sync(lambda: len([ln for ln in file_lines(tmp_path / "data")
                              if ln.startswith(b"stamps_tick")]) > ticks + 20,
                 within=20, what="other devices still committing")
        assert not [r["msg"] for r in gw.records if r.get("level") == "error"]
    finally:
        sender.loop_stop()
        sender.disconnect()
        assert gw.stop() == 0
    final = gw.wait_for_log(lambda r: r["msg"].startswith("stopped:"))
    assert final["readings_in"] == final["readings_committed"]


def test_a_burst_without_device_times_keeps_every_message(
        tmp_path: Path, mosquitto: Mosquitto, influx1: InfluxDB1) -> None:
    db = f"stamps_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    config = tmp_path / "gw.yaml"
    mqtt_config(config, mosquitto, base=BASE + "2", tls=False,
                sinks=f"  - {{type: influxdb1, name: i1, url: '{influx1.url}', database: {db}}}\n",
                devices=('  - {id: sens-b, driver: mqtt, topic: "compound/stamps2/sens", '
                         "measurement: burst, fields: {seq: $.seq}}\n"))
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
    sender = connect(mosquitto, client_id="stamps-burst")
    try:
        infos = [sender.publish("compound/stamps2/sens", json.dumps({"seq": n}), qos=1)
                 for n in range(200)]
        for info in infos:
            info.wait_for_publish(10)

        def counted() -> int:
            rows = influx1.select("SELECT count(seq) FROM burst", db)
            return rows[0]["count"] if rows and rows[0]["count"] >= 200 else 0

        try:
            assert eventually_sync(counted, within=30, what="200 points in InfluxDB") == 200
        except AssertionError:
            rows = influx1.select("SELECT count(seq) FROM burst", db)
            raise AssertionError(f"InfluxDB holds {rows} of 200 messages") from None
    finally:
        sender.loop_stop()
        sender.disconnect()
        assert gw.stop() == 0
