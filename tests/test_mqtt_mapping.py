"""Mapping unit tests and a property-based flood of malformed payloads."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mqtt.broker import Attachment, DeviceBroker
from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.mapping import Mapper, parse_time
from drivers.mqtt.sim import PLATES, plate_message
from gateway.driver import DeviceContext
from gateway.mqtt.client import Message
from tests.plugin_stub import StubGateway


def config(**kw: Any) -> MqttDeviceConfig:
    return MqttDeviceConfig(**{"id": "d1", "driver": "mqtt", "topic": "t/+cam/ev",
                               "measurement": "ev", "fields": {"v": "$.v"}, **kw})


def test_paths_tags_time_and_base64() -> None:
    m = Mapper(config(fields={"v": "$.a[1].v", "plate": {"path": "$.p", "base64": True}},
                      payload_tags={"kind": "$['k.x']"}, time="$.ts"))
    r = m.decode({"cam": "c1"}, json.dumps(
        {"a": [0, {"v": 2.5}], "p": "6LWjR1o3UzEz", "k.x": "car", "ts": 1_700_000_000_123}
    ).encode(), 1)
    assert r.fields == {"v": 2.5, "plate": "赣GZ7S13"}
    assert r.tags == {"cam": "c1", "kind": "car"}
    assert r.time_ns == 1_700_000_000_123_000_000


def test_time_formats() -> None:
    assert parse_time(1_700_000_000, "auto") == 1_700_000_000 * 10**9
    assert parse_time(1_700_000_000_000_000, "auto") == 1_700_000_000 * 10**9
    assert parse_time("2023-11-14T22:13:20Z", "auto") == 1_700_000_000 * 10**9
    assert parse_time(1.5, "s") == 1_500_000_000


def test_kv_and_number_formats() -> None:
    kv = Mapper(config(format="kv", fields={"t": "$.temp", "s": "$.state"}))
    r = kv.decode({}, b"temp=21.5, state=open", 5)
    assert r.fields == {"t": 21.5, "s": "open"} and r.time_ns == 5
    num = Mapper(config(format="number", fields={}))
    # One type whatever the sensor sends (InfluxDB refuses 20.5 after 20i in a field).
    for payload, value in ((b" 42 ", 42.0), (b"20.5", 20.5), (b"-3", -3.0)):
        fields = num.decode({}, payload, 5).fields
        assert fields == {"value": value} and type(fields["value"]) is float


def test_typed_fields_refuse_what_does_not_fit_rather_than_change_it() -> None:
    """``type: int`` (gateway/fieldtypes.py, shared with camera_push generic-json) stores
    20.5 as nothing, counted, not as 20: a truncated value is a wrong one."""
    m = Mapper(config(fields={"n": {"path": "$.n", "type": "int"}, "v": "$.v"}))
    stored = [m.decode({}, json.dumps({"n": n, "v": 1}).encode(), 1).fields.get("n")
              for n in (20, 20.0, "21", "21.0", True, 20.5, "20.5", "n/a",
                        "9007199254740993")]
    assert stored == [20, 20, 21, 21, 1, None, None, None, 9007199254740993]
    assert m.problems == {"wrong_type": 3}


def test_plate_camera_simulator_messages_map_through_its_profile() -> None:
    """The demo's plate camera (drivers/mqtt/sim.py) speaks what the vzicloud-plate
    profile reads: the base64 plate decodes back, the camera's name becomes a tag."""
    mapper = Mapper(MqttDeviceConfig.model_validate(  # the profile supplies the mapping
        {"id": "cam", "driver": "mqtt", "profile": "vzicloud-plate",
         "topic": "c/device/+sn/message/up/ivs_result"}))
    for plate in PLATES:
        message = plate_message("e5f1a0c3", plate, "gate-north")
        r = mapper.decode({"sn": "e5f1a0c3"}, json.dumps(message).encode(), 1)
        assert r.measurement == "vehicle_event"
        assert r.fields["plate"] == plate
        assert r.tags == {"sn": "e5f1a0c3", "camera_name": "gate-north"}
        assert r.time_ns == message["timestamp"] * 10**9

def make_broker() -> tuple[DeviceBroker, StubGateway, DeviceContext]:
    gateway = StubGateway()
    broker = DeviceBroker(gateway)
    # [arg-type]: MQTT devices never emit through their context (the broker submits)
    ctx = DeviceContext("d1", emit=None)  # type: ignore[arg-type]
    broker.attach(Attachment(Mapper(config(
        fields={"v": {"path": "$.v", "type": "float"}}, max_payload=4096)), ctx))
    return broker, gateway, ctx


junk = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c,
                                                                      max_size=4),
                 max_leaves=20).map(lambda o: json.dumps(o).encode()),
    st.builds(lambda v: json.dumps({"v": v}).encode(),
              st.text(max_size=5) | st.lists(st.integers(), max_size=3) | st.none()),
    st.just(b"x" * 5000),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(junk, st.booleans()), min_size=1, max_size=40))
def test_malformed_flood_counted_valid_ones_arrive(items: list[tuple[bytes, bool]]) -> None:
    broker, link, ctx = make_broker()
    batch, valid = [], []
    for i, (payload, interleave_valid) in enumerate(items):
        batch.append(Message("t/c1/ev", payload, 1, False, False, i * 2, 1))
        if interleave_valid:
            batch.append(Message("t/c1/ev", json.dumps({"v": i}).encode(), 1, False, False,
                                 i * 2 + 1, 1))
            valid.append(float(i))
    groups = broker._decode(batch)
    decoded = groups.get("d1")
    got = [r.fields["v"] for r in decoded.readings] if decoded else []
    for v in valid:
        assert v in got
    handled = len(got) + len(link.dead) + ctx.status.counters.get("filtered", 0)
    assert handled == len(batch)


def test_kv_without_a_mapping_stores_every_pair() -> None:
    """Found by an outside probe: `format: kv` without `fields` mapped the whole dict to
    "value", which no store takes, so every message was dead-lettered."""
    kv = Mapper(config(format="kv", fields={}))
    reading = kv.decode({}, b"a=1, b=x; temp=21.5", 5)
    assert reading.fields == {"a": 1, "b": "x", "temp": 21.5}
