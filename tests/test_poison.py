"""A poison message costs one message, never the stream (issue 10, defect 1).

``{"label": "\\ud800"}`` is valid JSON whose string is not valid text: no store can take
it. It used to pass the mapping, then make line-protocol encoding raise inside the MQTT
intake task, which died silently with every device still ``online``; the unacknowledged
burst came back after each restart and killed intake again. Now the mapping drops such a
field (counted ``invalid_text``), a message left with nothing is rejected and
dead-lettered, and anything that still fails after decoding is isolated per message.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.gwproc import GatewayProcess
from tests.support.files import file_lines
from tests.support.mqtt import connect, mqtt_config
from tests.support.servers import Mosquitto
from tests.support.wait import eventually_sync

BASE = "compound/poison/gw"
DEVICE = ('  - {id: cam-p, driver: mqtt, topic: "compound/poison/+cam/ev", measurement: poison_ev, '
          'fields: {seq: "$.seq", label: "$.label"}}\n')


def test_lone_surrogate_costs_one_message_and_intake_goes_on(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = tmp_path / "gw.yaml"
    mqtt_config(config, mosquitto, base=BASE, tls=False,
                extra_mqtt="  stats_interval: 0.5s\n",
                sinks="  - {type: file, name: local}\n", devices=DEVICE)
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
    watcher = connect(mosquitto, user="ops")
    seen: dict[str, list[dict]] = {"errors": [], "state": [], "stats": []}
    watcher.on_message = lambda c, u, m: seen[m.topic.rsplit("/", 1)[1]].append(
        json.loads(m.payload))
    watcher.subscribe([(f"{BASE}/errors", 1), (f"{BASE}/devices/cam-p/state", 1),
                       (f"{BASE}/stats", 1)])
    errors, states = seen["errors"], seen["state"]
    sender = connect(mosquitto, client_id="poison-sender")
    try:
        payloads = [json.dumps({"seq": n, "label": f"car {n}"}).encode() for n in range(10)]
        payloads.append(b'{"label": "\\ud800"}')                  # nothing left: rejected
        payloads.append(b'{"seq": 10, "label": "\\udfff tail"}')  # label dropped, seq kept
        payloads += [json.dumps({"seq": n, "label": f"car {n}"}).encode()
                     for n in range(11, 20)]
        for info in [sender.publish("compound/poison/gate1/ev", p, qos=1) for p in payloads]:
            info.wait_for_publish(10)

        def stored() -> list[bytes]:
            lines = [ln for ln in file_lines(tmp_path / "data") if ln.startswith(b"poison_ev")]
            return lines if len(lines) >= 20 else []

        try:
            lines = eventually_sync(stored, within=30, what="every good message committed")
        except AssertionError:
            got = file_lines(tmp_path / "data")
            raise AssertionError(f"{len(got)} lines: {got[-3:]}\n"
                                 + "".join(gw.raw[-20:])) from None

        seqs = sorted(int(ln.split(b"seq=")[1].split(b"i")[0]) for ln in lines)
        assert seqs == list(range(20)), "each good message exactly once"
        assert not any(b"\\ud" in ln for ln in lines)
        assert b'label="car' not in next(ln for ln in lines if b"seq=10i" in ln)

        eventually_sync(lambda: errors, within=10, what="the poison dead-lettered")
        assert errors[0]["device"] == "cam-p" and errors[0]["reason"].startswith("no_fields")

        # Intake is still alive after the poison: a later message is committed too.
        later = sender.publish("compound/poison/gate1/ev", json.dumps({"seq": 99}), qos=1)
        later.wait_for_publish(10)
        eventually_sync(lambda: any(b"seq=99i" in ln for ln in file_lines(tmp_path / "data")),
                 within=20, what="intake alive after the poison")
        counters = eventually_sync(
            lambda: (seen["stats"] and seen["stats"][-1]["devices"]["cam-p"].get(
                "invalid_text") and seen["stats"][-1]["devices"]["cam-p"]), within=10,
            what="the dropped field counted")
        assert counters["invalid_text"] == 2 and counters["no_fields"] == 1, counters
        time.sleep(1.5)  # one more device state check after everything
        assert states and states[-1]["state"] == "online", states[-1:]
        assert gw.proc is not None and gw.proc.poll() is None
        assert not [r for r in gw.records if r.get("level") == "ERROR"], \
            [r["msg"] for r in gw.records if r.get("level") == "ERROR"]
    finally:
        for client in (sender, watcher):
            client.loop_stop()
            client.disconnect()
        assert gw.stop() == 0
