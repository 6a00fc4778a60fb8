"""No event lost: kill -9 under a QoS 1 flood, broker restart under load, will and birth."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.gwproc import GatewayProcess
from tests.support.mqtt import TestClient, connect, mqtt_config, retained
from tests.support.servers import Mosquitto, VictoriaMetrics
from tests.support.wait import eventually_sync

DEVICE = """\
  - {id: flood-1, driver: mqtt, topic: "compound/flood/+cam/events", measurement: %s,
     fields: {seq: $.seq}, time: $.ts, time_format: ms}
"""


def flood(client: TestClient, count: int, t0_ms: int, rate: float) -> threading.Thread:
    def run() -> None:
        for seq in range(count):
            client.publish("compound/flood/cam1/events",
                           json.dumps({"seq": seq, "ts": t0_ms + seq * 10}), qos=1)
            if seq % 100 == 0:
                time.sleep(100 / rate)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def seqs(victoria: VictoriaMetrics, measurement: str) -> list[float]:
    rows = victoria.export(f'{{__name__="{measurement}_seq"}}')
    return sorted(v for r in rows for v in r["values"])


def test_kill9_under_qos1_flood_loses_nothing(tmp_path: Path, mosquitto_factory: Callable[...,
                                              Mosquitto],
                                              victoria: VictoriaMetrics) -> None:
    broker = mosquitto_factory(persistence=True)
    config = tmp_path / "gw.yaml"
    measurement = "flood_kill"
    mqtt_config(config, broker, base="compound/flood/gw", tls=False,
                sinks=f"  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, "
                      "token: t}\n", devices=DEVICE % measurement)
    count, t0 = 6000, int(time.time() * 1000) - 120_000
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
    client = connect(broker)
    publisher = flood(client, count, t0, rate=3000)
    time.sleep(1.0)
    gw.kill()  # mid-flood: some received, some committed, some acknowledged
    time.sleep(0.5)
    gw = GatewayProcess(config).start()
    try:
        publisher.join(30)
        got = eventually_sync(lambda: s if len(set(s := seqs(victoria, measurement))) == count
                              else None, within=60, what="every event in the store")
    finally:
        client.loop_stop()
        client.disconnect()
        gw.stop()
    assert sorted(set(got)) == [float(s) for s in range(count)]
    assert len(got) == count, "duplicates in the store"


def test_broker_restart_under_load(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
                                   victoria: VictoriaMetrics) -> None:
    broker = mosquitto_factory(persistence=True)
    config = tmp_path / "gw.yaml"
    measurement = "flood_broker"
    base = "compound/flood/gw2"
    mqtt_config(config, broker, base=base, tls=False,
                sinks=f"  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, "
                      "token: t}\n", devices=DEVICE % measurement)
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
        count, t0 = 3000, int(time.time() * 1000) - 120_000
        client = connect(broker, client_id="flood-pub")
        flood(client, count // 2, t0, rate=3000).join(30)
        time.sleep(0.3)
        broker.stop()
        time.sleep(1.0)
        broker.start()
        # the retained birth and device state come back without anyone asking
        # (mosquitto fires our will when it shuts down; the birth must replace it)
        eventually_sync(
            lambda: json.loads(retained(broker, f"{base}/status"))["state"] == "online",
            within=60, what="birth re-published after the broker restart")
        assert json.loads(retained(broker, f"{base}/devices/flood-1/state"))["state"]
        client.loop_stop()
        client = connect(broker, client_id="flood-pub2")
        for seq in range(count // 2, count):
            client.publish("compound/flood/cam1/events",
                           json.dumps({"seq": seq, "ts": t0 + seq * 10}), qos=1)
        got = eventually_sync(lambda: s if len(set(s := seqs(victoria, measurement))) == count
                              else None, within=60, what="every event in the store")
        client.loop_stop()
    finally:
        assert gw.stop() == 0
    assert len(got) == count, "duplicates in the store"
    assert sum("connected" in m and "-dev" in m for m in gw.messages()) >= 2


def test_last_will_on_kill_and_birth_on_return(tmp_path: Path, mosquitto_factory: Callable[...,
                                               Mosquitto]) -> None:
    broker = mosquitto_factory()
    config = tmp_path / "gw.yaml"
    base = "compound/will/gw"
    mqtt_config(config, broker, base=base, tls=False, sinks="  - {type: file, name: f}\n",
                devices="  []\n")
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "connected" in r["msg"] and "-ops" in r["msg"])
    assert json.loads(retained(broker, f"{base}/status"))["state"] == "online"
    gw.kill()
    will = eventually_sync(
        lambda: json.loads(retained(broker, f"{base}/status"))["state"] == "offline",
        within=60, what="last will")
    assert will
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "connected" in r["msg"] and "-ops" in r["msg"])
        # "connected" is logged just before the birth is published: poll, don't race
        birth = eventually_sync(lambda: (b := json.loads(retained(broker, f"{base}/status")))
                                ["state"] == "online" and b, within=20, what="birth")
        assert birth["state"] == "online" and birth["gateway"] == "gw-mqtt"
        assert birth["config"] and birth["version"]
    finally:
        assert gw.stop() == 0
    assert json.loads(retained(broker, f"{base}/status"))["state"] == "offline"
