"""MQTT devices end to end: mosquitto (TLS, password, ACL) -> iotgw run -> VictoriaMetrics.

Frigate payloads follow the shape in Frigate's documentation (frigate/events with
type/before/after); the plate camera payload follows Vzicloud's published ivs_result.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.gwproc import GatewayProcess
from tests.support.mqtt import connect, mqtt_config
from tests.support.servers import Mosquitto, VictoriaMetrics
from tests.support.wait import eventually_sync


def publish(broker: Mosquitto, topic: str, payload: str | bytes, qos: int = 1,
            user: str = "gw") -> None:
    """mosquitto_pub, the way an installer tests a camera topic by hand."""
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", user,
                    "-P", broker.users[user], "-q", str(qos), "-t", topic, "-s"],
                   input=payload if isinstance(payload, bytes) else payload.encode(),
                   check=True, timeout=10)


def frigate_event(kind: str, event_id: str, start: float, end: float | None,
                  score: float = 0.8, plate: str | None = None) -> dict:
    after = {
        "id": event_id, "camera": "gate_east", "frame_time": start + 1, "snapshot_time": start,
        "label": "car", "sub_label": None, "top_score": score + 0.05, "false_positive": False,
        "start_time": start, "end_time": end, "score": score, "box": [424, 500, 536, 712],
        "area": 23744, "ratio": 0.5, "region": [256, 256, 768, 768], "stationary": False,
        "motionless_count": 0, "position_changes": 2, "current_zones": ["driveway"],
        "entered_zones": ["driveway", "gate"], "has_clip": False, "has_snapshot": True,
        "attributes": {}, "current_attributes": [],
    }
    if plate is not None:
        after["recognized_license_plate"] = plate
        after["recognized_license_plate_score"] = 0.91
    return {"type": kind, "before": {**after, "score": score - 0.1}, "after": after}


def test_frigate_and_plate_camera_into_victoria(tmp_path: Path, mosquitto: Mosquitto,
                                                victoria: VictoriaMetrics) -> None:
    config = tmp_path / "gw.yaml"
    base = "compound/ingest-t1/gw"
    mqtt_config(config, mosquitto, base=base, sinks=(
        f"  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"),
        devices="""\
  - {id: t1-frigate, driver: mqtt, profile: frigate-events,
     topic: compound/ingest-t1/frigate/events, tags: {building: "1"}}
  - {id: t1-plates, driver: mqtt, profile: vzicloud-plate,
     topic: "compound/ingest-t1/device/+sn/message/up/ivs_result"}
  - {id: t1-sensors, driver: mqtt, topic: "compound/ingest-t1/sensors/+room/+kind",
     format: number, measurement: t1_room, qos: 0}
""")
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
        now = round(time.time(), 3)
        events = [frigate_event("new", "1700-abc", now - 5, None, 0.7),
                  frigate_event("update", "1700-abc", now - 5, None, 0.8, plate="AB123"),
                  frigate_event("end", "1700-abc", now - 5, now - 1, 0.9, plate="AB123")]
        for event in events[:2]:
            publish(mosquitto, "compound/ingest-t1/frigate/events", json.dumps(event))
        client = connect(mosquitto)
        client.publish("compound/ingest-t1/frigate/events", json.dumps(events[2]),
                       qos=1).wait_for_publish(5)
        plate = {"id": 7, "sn": "e5f1", "name": "ivs_result", "version": "1.0",
                 "timestamp": int(now), "payload": {"Type": "ivs_result", "AlarmInfoPlate": {
                     "channel": 0, "deviceName": "gate-north", "ipaddr": "10.0.0.9",
                     "result": {"PlateResult": {
                         "license": "6LWjR1o3UzEz", "confidence": 97, "colorType": 1,
                         "type": 1, "direction": 0, "triggerType": 8,
                         "timeStamp": {"Timeval": {"sec": int(now) - 2, "usec": 0}}}}}}}
        client.publish("compound/ingest-t1/device/e5f1/message/up/ivs_result",
                       json.dumps(plate), qos=1).wait_for_publish(5)
        publish(mosquitto, "compound/ingest-t1/sensors/kitchen/temperature", "21.5", qos=0)
        client.loop_stop()
        client.disconnect()

        def scores() -> dict:
            got = victoria.samples('{__name__=~"camera_event_score|vehicle_event_.*|t1_room_.*"'
                                   ',gateway="gw-mqtt"}')
            return got if len(got) >= 5 else {}

        got = eventually_sync(scores, what="events in VictoriaMetrics")
    finally:
        assert gw.stop() == 0
    # the gateway turns float seconds into ns (round(s * 1e9)); the store keeps whole ms
    start_ms = round((now - 5) * 10**9) // 10**6
    end_ms = round((now - 1) * 10**9) // 10**6
    frigate = {k: v for k, v in got.items() if k[0] == "camera_event_score"}
    by_type = {next(p for p in k if p.startswith("type=")): v for k, v in frigate.items()}
    assert by_type["type=new"] == [(start_ms, 0.7)]
    assert by_type["type=update"] == [(start_ms, 0.8)]
    assert by_type["type=end"] == [(end_ms, 0.9)]
    key = next(iter(frigate))
    assert {"camera=gate_east", "label=car", "building=1", "device=t1-frigate"} <= set(key)
    conf = [v for k, v in got.items() if k[0] == "vehicle_event_confidence"]
    assert conf == [[((int(now) - 2) * 1000, 97.0)]]
    conf_key = next(k for k in got if k[0] == "vehicle_event_confidence")
    assert {"sn=e5f1", "camera_name=gate-north", "device=t1-plates"} <= set(conf_key)
    room = [(k, v) for k, v in got.items() if k[0] == "t1_room_value"]
    assert len(room) == 1 and room[0][1][0][1] == 21.5
    assert {"room=kitchen", "kind=temperature"} <= set(room[0][0])
