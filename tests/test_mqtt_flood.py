"""A hypothesis-generated flood of malformed payloads through a real mosquitto into a
running ``iotgw run``: no crash, every rejected payload counted per device (``stats``)
and dead-lettered (published on ``errors`` or counted as suppressed by the dead-letter
rate limit), and the valid events interleaved with the junk all reach VictoriaMetrics.

Which generated payloads are valid is decided by the device's own Mapper (the mapping
rules are unit-tested in test_mqtt_mapping.py); this test is about the path: broker,
connection, decode, counters, dead letters, commit, sink.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.mapping import Mapper, Rejected
from tests.gwproc import GatewayProcess
from tests.support.mqtt import Message, connect, mqtt_config
from tests.support.servers import Mosquitto, VictoriaMetrics
from tests.support.wait import eventually_sync

BASE = "compound/junk/gw"
TOPIC = "compound/junk/cam1/ev"
DEVICE = {"id": "junk-1", "driver": "mqtt", "topic": "compound/junk/+cam/ev",
          "measurement": "junk_flood", "fields": {"seq": {"path": "$.seq", "required": True},
                                                  "label": "$.x"},
          "time": "$.ts", "time_format": "ms", "max_payload": 1024}
REJECTIONS = {"payload_too_large", "invalid_json", "not_utf8", "no_fields", "wrong_type",
              "missing_path", "decode_error", "rate_limited"}

_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
            # lone surrogates: valid JSON ("\ud800"), not valid text (issue 10, defect 1)
            | st.text(st.characters(categories=["Cs", "Lu", "Nd"]), max_size=4))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["seq", "ts", "x", "Seq", ""]), inner, max_size=4), max_leaves=12)
_with_seq = st.builds(lambda seq, x: json.dumps({"seq": seq, "x": x}).encode(),
                      st.integers(0, 99), _scalars | st.text(
                          st.characters(categories=["Cs"]), min_size=1, max_size=3))
JUNK = st.one_of(
    st.binary(max_size=300),                                          # binary junk
    st.text(max_size=200).map(str.encode),                            # text, not JSON
    _json.map(lambda v: json.dumps(v).encode()),                      # JSON, wrong shapes
    _with_seq,                                                        # right shape, odd x
    st.integers(1, 3000).map(lambda n: b"[" * n),                     # deep / truncated
    st.integers(1100, 70_000).map(lambda n: b'{"seq": 1, "x": "' + b"y" * n + b'"}'),
    st.binary(min_size=1, max_size=40).map(lambda b: b'{"seq": ' + b),  # truncated JSON
)


def test_malformed_flood_through_broker(tmp_path: Path, mosquitto: Mosquitto,
                                        victoria: VictoriaMetrics) -> None:
    config = tmp_path / "gw.yaml"
    device = ", ".join(f"{k}: {json.dumps(v)}" for k, v in DEVICE.items())
    mqtt_config(config, mosquitto, base=BASE, tls=False, extra_mqtt="  stats_interval: 0.5s\n",
                sinks=f"  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, "
                      "token: t}\n", devices=f"  - {{{device}}}\n")
    oracle = Mapper(MqttDeviceConfig(**DEVICE))
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
    watcher = connect(mosquitto, user="ops")
    errors: list[dict] = []
    stats: list[dict] = []

    def on_message(client: object, userdata: object, message: Message) -> None:
        (errors if message.topic.endswith("/errors") else stats).append(
            json.loads(message.payload))

    watcher.on_message = on_message
    watcher.subscribe([(f"{BASE}/errors", 1), (f"{BASE}/stats", 1)])
    sender = connect(mosquitto, client_id="junk-sender")
    expected: dict = {"rejected": 0, "valid": 0, "ours": set()}
    t0 = int(time.time() * 1000) - 60_000
    seq = iter(range(10**6, 10**7))

    @settings(max_examples=6, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(JUNK, min_size=20, max_size=120), st.randoms(use_true_random=False))
    def flood(junk: list[bytes], rng: random.Random) -> None:
        infos = []
        for payload in junk:
            try:
                oracle.decode({"cam": "cam1"}, payload, 1)
                expected["valid"] += 1  # junk that happens to be a valid event
            except Rejected:
                expected["rejected"] += 1
            infos.append(sender.publish(TOPIC, payload, qos=1))
            if rng.random() < 0.3:  # a valid event between the junk
                n = next(seq)
                expected["ours"].add(n)
                # a series of its own (topic level -> tag): nothing for the store to merge
                infos.append(sender.publish(f"compound/junk/v{n}/ev",
                                            json.dumps({"seq": n, "ts": t0 + n % 60_000}),
                                            qos=1))
        for info in infos:
            info.wait_for_publish(10)

    try:
        flood()
        assert expected["rejected"] > 100, "the strategy produced too little junk"

        def counted() -> dict | None:
            last = stats[-1] if stats else None
            if last is None:
                return None
            counters = last["devices"].get("junk-1", {})
            rejected = sum(v for k, v in counters.items() if k in REJECTIONS)
            return last if rejected >= expected["rejected"] + field_wrong_type and \
                counters.get("invalid_text", 0) >= oracle.problems.get("invalid_text", 0) \
                else None

        # Field-level drops (the message is kept without the field) count per device too.
        field_wrong_type = oracle.problems.get("wrong_type", 0)
        assert oracle.problems.get("invalid_text", 0) > 0, "no lone surrogate generated"
        last = eventually_sync(counted, within=60, what="every rejection counted in stats")
        counters = last["devices"]["junk-1"]
        assert sum(v for k, v in counters.items() if k in REJECTIONS) == \
            expected["rejected"] + field_wrong_type
        assert counters.get("invalid_text", 0) == oracle.problems["invalid_text"]
        ops = last["ops"]
        assert ops["dead_letters"] == expected["rejected"], ops
        eventually_sync(lambda: len(errors) + ops.get("dead_letters_suppressed", 0)
                 >= expected["rejected"], within=10, what="dead letters on errors")
        assert len(errors) + ops.get("dead_letters_suppressed", 0) == expected["rejected"]
        assert all(e["device"] == "junk-1" and e["reason"] and e["topic"] == TOPIC
                   and len(e["payload"]) <= 400 for e in errors), errors[:3]

        ours = expected["ours"]
        assert len(ours) > 30

        def stored() -> set[float]:
            rows = victoria.export('{__name__="junk_flood_seq"}')
            got = {v for r in rows for v in r["values"]}
            return got if {float(s) for s in ours} <= got else set()

        try:
            eventually_sync(stored, within=60, what="valid events in VictoriaMetrics")
        except AssertionError:
            rows = victoria.export('{__name__="junk_flood_seq"}')
            got = {v for r in rows for v in r["values"]}
            missing = sorted(s for s in ours if float(s) not in got)
            raise AssertionError(f"{len(missing)} of {len(ours)} valid events missing: "
                                 f"{missing[:10]}; stats {stats[-1]}") from None
        assert gw.proc is not None and gw.proc.poll() is None, "the gateway died"
    finally:
        for client in (sender, watcher):
            client.loop_stop()
            client.disconnect()
        assert gw.stop() == 0
