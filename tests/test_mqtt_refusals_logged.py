"""MQTT device refusals are logged once per device and kind, not only counted.

Found by the outside probe: invalid JSON, undecodable text, payloads without a mapped
field, oversized payloads and non-numbers were counted and dead-lettered, but no log line
ever appeared (camera_push and event_stream log each kind once). Real mosquitto, the
``iotgw run`` process and its JSON log."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tests.gwproc import GatewayProcess
from tests.support.mqtt import connect, mqtt_config
from tests.support.servers import Mosquitto
from tests.support.wait import eventually_sync

T = "compound/refusals-t1"
DEVICES = f"""\
  - {{id: r-json, driver: mqtt, topic: {T}/json, measurement: r_json,
     fields: {{t: {{path: $.t, type: float}}}}, max_payload: 1KiB}}
  - {{id: r-num, driver: mqtt, topic: "{T}/num/+room", format: number, measurement: r_num}}
  - {{id: r-private, driver: mqtt, topic: {T}/plate, format: number, measurement: r_plate,
     pseudonymize: [value]}}
"""
SECRET = "GZ7S13-plate"
BAD = [  # topic, payload, device, kind
    (f"{T}/json", b"{bad json", "r-json", "invalid_json"),
    (f"{T}/json", b'{"other": 1}', "r-json", "no_fields"),
    (f"{T}/json", b"x" * 2000, "r-json", "payload_too_large"),
    (f"{T}/num/hall", b"\xff\xfe", "r-num", "not_utf8"),
    (f"{T}/num/hall", b"12abc", "r-num", "not_a_number"),
    (f"{T}/plate", SECRET.encode(), "r-private", "not_a_number"),
]


def test_each_refusal_is_logged_once_per_device_and_kind(tmp_path: Path,
                                                         mosquitto: Mosquitto) -> None:
    config = tmp_path / "gw.yaml"
    key = tmp_path / "privacy.key"
    key.write_text("k" * 32)
    mqtt_config(config, mosquitto, base=f"{T}/gw", tls=False,
                sinks="  - {type: file}\n", devices=DEVICES)
    config.write_text(config.read_text() + f"privacy: {{key_file: '{key}'}}\n")
    gw = GatewayProcess(config).start()
    client = connect(mosquitto)
    try:
        gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
        for _ in range(3):  # every kind repeats: still one line each
            for topic, payload, _device, _kind in BAD:
                client.publish(topic, payload, qos=1).wait_for_publish(5)
        # In order on one session: once this is stored, every refusal was handled.
        client.publish(f"{T}/json", json.dumps({"t": 99.5}), qos=1).wait_for_publish(5)
        lines = tmp_path / "data" / "lines"
        eventually_sync(lambda: any("t=99.5" in p.read_text() for p in lines.glob("*.lp")),
                        what="the last, valid message stored")
        # A field dropped for its type (the message itself may still be stored) too.
        for _ in range(3):
            client.publish(f"{T}/json", b'{"t": "hot"}', qos=1).wait_for_publish(5)
        gw.wait_for_log(lambda r: "mqtt device r-json: a field dropped" in r["msg"]
                        and "(wrong_type)" in r["msg"])
    finally:
        client.close()
        gw.stop()
    refusals = [r for r in gw.records if "refused (" in str(r.get("msg", ""))]
    logged = Counter((device, kind) for _t, _p, device, kind in BAD
                     for r in refusals
                     if f"mqtt device {device}:" in r["msg"] and f"({kind})" in r["msg"])
    assert logged == Counter({(d, k): 1 for _t, _p, d, k in BAD}), refusals
    assert len(refusals) == len(BAD)
    assert all(r.get("level") == "warning" for r in refusals), refusals
    assert sum("a field dropped" in str(r.get("msg")) for r in gw.records) == 1
    # the detail says what was wrong, but never quotes a pseudonymising device's payload
    assert any("'12abc'" in line for line in gw.raw)
    assert not any(SECRET in line for line in gw.raw)
