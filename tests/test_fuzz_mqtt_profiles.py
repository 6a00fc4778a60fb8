"""Fuzz harness for MQTT device payloads, every shipped MQTT profile (issue 10).

For each profile, good messages (shaped like the vendor's published payloads, each with
a time of its own) are interleaved with hostile ones: the same documents with leaves
replaced by lone surrogates, huge or non-finite numbers, deep nesting, wrong types, and
plain junk. They go through the real intake path in process (DeviceBroker decode and
submit, the real Pipeline and SQLite buffer). The property: nothing raises, every good
message is stored exactly once, and every message is accounted for: stored, filtered,
or rejected and dead-lettered; every dropped field is counted. A fixed seed and a few
dozen examples run in CI; ``-m soak`` runs many more.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.mqtt.broker import Attachment, DeviceBroker
from drivers.mqtt.config import MqttDeviceConfig, load_profile
from drivers.mqtt.mapping import Filtered, Mapper, Rejected
from gateway.driver import DeviceContext
from gateway.mqtt.client import Message
from tests.plugin_stub import StubGateway
from tests.support.pipeline import committed_lines, make_pipeline

T0 = 1_750_000_000  # seconds; good message i has time T0 + i, hostile ones T0 + 10**6 + j


def _frigate(t: int) -> dict[str, Any]:
    after = {"id": f"{t}.5-abc", "camera": "gate_east", "label": "car", "sub_label": None,
             "top_score": 0.9, "start_time": t - 5, "end_time": t, "score": 0.8,
             "stationary": False, "current_zones": ["driveway"], "entered_zones": ["gate"],
             "has_snapshot": True, "recognized_license_plate": "AB123",
             "recognized_license_plate_score": 0.91}
    return {"type": "end", "before": dict(after), "after": after}


def _vzicloud(t: int) -> dict[str, Any]:
    return {"id": 7, "sn": "e5f1", "name": "ivs_result", "timestamp": t, "payload": {
        "Type": "ivs_result", "AlarmInfoPlate": {"deviceName": "gate-north", "result": {
            "PlateResult": {"license": "6LWjR1o3UzEz", "confidence": 97, "colorType": 1,
                            "type": 1, "direction": 0, "triggerType": 8,
                            "timeStamp": {"Timeval": {"sec": t, "usec": 0}}}}}}}


def _frigate_lpr(t: int) -> dict[str, Any]:
    return {"type": "lpr", "id": f"{t}-x", "name": "resident", "plate": "AB123",
            "score": 0.93, "camera": "gate_east", "timestamp": t}


def _generic(t: int) -> dict[str, Any]:
    return {"temperature": 21.5, "humidity": 40, "battery": 97, "time": t}


GOOD: dict[str, Any] = {
    "frigate-events": _frigate, "vzicloud-plate": _vzicloud, "frigate-lpr": _frigate_lpr,
    "generic-json": _generic,
}
"""A good-message builder per shipped profile; a new profile without one fails below."""


def shipped_profiles() -> list[str]:
    from drivers.mqtt.config import PROFILE_DIR

    return sorted(p.name.removeprefix("mqtt-").removesuffix(".yaml")
                  for p in PROFILE_DIR.iterdir() if p.name.startswith("mqtt-"))


def test_every_shipped_profile_has_a_good_message() -> None:
    assert sorted(GOOD) == shipped_profiles()


def _topic(profile: dict[str, Any]) -> str:
    topic = profile["topic"] if isinstance(profile["topic"], str) else profile["topic"][0]
    return "/".join("x1" if level.startswith("+") else level for level in topic.split("/"))


HOSTILE_LEAF = st.one_of(
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),   # lone surrogates
    st.text(max_size=30), st.none(), st.booleans(),
    st.integers(-2**80, 2**80), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.none(),
                                                         max_size=2),
    st.integers(1, 400).map(lambda n: json.loads("[" * n + "]" * n)),    # deep nesting
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _paths(value, (*prefix, index))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


@st.composite
def hostile_message(draw: st.DrawFn, build: Any, index: int) -> bytes:
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "junk", "text"]))
    if kind == "junk":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    doc = build(T0 + 10**6 + index)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        doc = _replace(doc, draw(st.sampled_from(paths)), draw(HOSTILE_LEAF))
    return json.dumps(doc).encode()


async def _run_profile(tmp_path: Path, name: str, messages: list[tuple[bytes, bool]]) -> None:
    pipeline, buffer, stats = await make_pipeline(tmp_path)
    try:
        link = StubGateway(pipeline)
        broker = DeviceBroker(link)
        config = MqttDeviceConfig.model_validate({"id": "cam", "driver": "mqtt", "profile": name})
        # [arg-type]: MQTT devices never emit through their context (the broker submits)
        ctx = DeviceContext("cam", emit=None)  # type: ignore[arg-type]
        mapper = Mapper(config)
        broker.attach(Attachment(mapper, ctx))
        oracle = Mapper(config)
        expect_stored = expect_filtered = expect_rejected = 0
        for payload, _good in messages:
            try:
                oracle.decode({}, payload, 1)
                expect_stored += 1
            except Filtered:
                expect_filtered += 1
            except Rejected:
                expect_rejected += 1
        topic = _topic(load_profile(name))
        batch = [Message(topic, payload, 1, False, False, mid, 0)
                 for mid, (payload, _good) in enumerate(messages)]
        await broker._submit(broker._decode(batch))
        await pipeline.flush()
        lines = await committed_lines(buffer)
        lines = [line for line in lines if line]
        good_times = [(T0 + i) * 10**9 for i, (_p, good) in enumerate(messages) if good]
        stamps = [int(line.rsplit(b" ", 1)[1]) for line in lines]
        for stamp in good_times:
            assert stamps.count(stamp) == 1, f"good message at {stamp}: {stamps.count(stamp)}x"
        assert len(lines) == expect_stored, "every decodable message stored exactly once"
        assert ctx.status.counters.get("filtered", 0) == expect_filtered
        assert len(link.dead) == expect_rejected, "every rejected message dead-lettered"
        assert mapper.problems == oracle.problems, "every dropped field counted"
        assert stats.readings_committed == expect_stored
    finally:
        await buffer.close()


def _check(name: str, max_examples: int) -> None:
    import asyncio
    import tempfile

    build = GOOD[name]

    @settings(max_examples=max_examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        messages: list[tuple[bytes, bool]] = []
        count = data.draw(st.integers(1, 25))
        rng = random.Random(count)
        for i in range(count):
            if rng.random() < 0.4:
                messages.append((json.dumps(build(T0 + i)).encode(), True))
            else:
                messages.append((data.draw(hostile_message(build, i)), False))
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(_run_profile(Path(tmp), name, messages))

    prop()


@pytest.mark.parametrize("name", sorted(GOOD))
def test_hostile_payloads_for_profile(name: str) -> None:
    _check(name, max_examples=50)


@pytest.mark.soak
@pytest.mark.parametrize("name", sorted(GOOD))
def test_hostile_payloads_for_profile_long(name: str) -> None:
    _check(name, max_examples=1000)
