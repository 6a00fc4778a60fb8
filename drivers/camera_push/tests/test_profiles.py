"""Profiles decode the vendors' formats (testcases/), refuse the rest with a reason, and
never raise anything but Refused, whatever the body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.camera_push import multipart, sim
from drivers.camera_push.config import CameraPushConfig
from drivers.camera_push.payload import Refused
from drivers.camera_push.profiles import PROFILES, make_profile

CASES = Path(__file__).resolve().parent.parent / "testcases"
ARRIVAL = 1_800_000_000_000_000_000


def profile_for(name: str, mapping: dict[str, Any] | None = None) -> Any:
    config = CameraPushConfig.model_validate({
        "id": "d", "driver": "camera_push", "profile": name, "token": "t",
        **({"mapping": mapping} if mapping else {})})
    return make_profile(config)


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_testcase(case: str) -> None:
    folder = CASES / case
    request = json.loads((folder / "request.json").read_text())
    expected = json.loads((folder / "expected.json").read_text())
    body = (folder / "body.bin").read_bytes()
    profile = profile_for(request["profile"], request.get("mapping"))
    if "refused" in expected:
        with pytest.raises(Refused) as caught:
            profile.parse(request["content_type"], body, ARRIVAL)
        assert (caught.value.status, caught.value.reason) == (expected["refused"],
                                                              expected["reason"])
        return
    parsed = profile.parse(request["content_type"], body, ARRIVAL)
    if "kind" in expected:
        assert parsed.reading is None and parsed.kind == expected["kind"]
    else:
        reading = parsed.reading
        assert reading is not None
        assert reading.measurement == expected["measurement"]
        assert dict(reading.tags) == expected.get("tags", dict(reading.tags))
        assert {k: reading.fields.get(k) for k in expected["fields"]} == expected["fields"]
        assert reading.time_ns == expected.get("time_ns", reading.time_ns)
        assert parsed.key == expected.get("key", parsed.key)
        assert len(parsed.images) == expected["images"]
        if "image_bytes" in expected:
            assert sum(len(i.data) for i in parsed.images) == expected["image_bytes"]
    if "answer" in expected:
        assert json.loads(profile.answer(parsed, False).body) == expected["answer"]


def test_plate_camera_is_told_ok_only_when_opening() -> None:
    profile = profile_for("vzenith-plate")
    parsed = profile.parse("application/json", sim.PlateCamera(1, "d", "t").event("粤B1"),
                           ARRIVAL)
    assert json.loads(profile.answer(parsed, True).body) == {
        "Response_AlarmInfoPlate": {"info": "ok"}}
    assert json.loads(profile.answer(parsed, False).body) == {
        "Response_AlarmInfoPlate": {"info": "no"}}


def test_same_second_card_swipes_get_distinct_deterministic_times() -> None:
    profile = profile_for("hikvision-isapi")
    times = [profile.parse("application/json", json.dumps(sim.access_event(n)).encode(),
                           ARRIVAL).reading.time_ns for n in (100, 101, 100)]
    assert times[0] != times[1] and times[0] == times[2]


def test_multipart_split_keeps_binary_parts_exact() -> None:
    picture = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    body = sim.multipart_body([("a", "", "text/plain", b"x"),
                               ("p", "p.jpg", "image/jpeg", picture)], "b0undary")
    parts = multipart.split(body, 'multipart/form-data; boundary="b0undary"')
    assert [(p.name, p.filename, p.data) for p in parts] == [("a", "", b"x"),
                                                             ("p", "p.jpg", picture)]


def test_too_many_parts_refused() -> None:
    body = sim.multipart_body([("p", "", "image/jpeg", b"x")] * (multipart.MAX_PARTS + 1), "b")
    with pytest.raises(Refused, match="more than"):
        multipart.split(body, "multipart/form-data; boundary=b")


def test_every_profile_is_in_the_table() -> None:
    literal = CameraPushConfig.model_fields["profile"].annotation
    assert set(PROFILES) == set(literal.__args__)  # type: ignore[union-attr]


MAPPING = {"measurement": "m", "fields": {"v": "$.v", "w": {"path": "$.a[0].b", "type": "int"}},
           "payload_tags": {"t": "$.a[1]"}, "time": "$.t",
           "event_id": "$.id"}
CONTENT_TYPES = st.sampled_from([
    "application/json", "application/xml", "text/xml", "", "text/plain",
    "multipart/form-data; boundary=MIME_boundary", "multipart/form-data",
    "multipart/form-data; boundary=", "image/jpeg"])


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)


def _mutations() -> st.SearchStrategy[bytes]:
    seeds = [p.read_bytes() for p in sorted(CASES.glob("*/body.bin"))]
    return st.builds(lambda seed, cut, junk: seed[:cut] + junk + seed[cut:],
                     st.sampled_from(seeds), st.integers(0, 4000), st.binary(max_size=40))


BODIES = st.one_of(st.binary(max_size=400), _mutations(),
                   _json_values().map(lambda v: json.dumps(v).encode()),
                   st.builds(lambda alarm: json.dumps({"AlarmInfoPlate": alarm}).encode(),
                             _json_values()),
                   st.builds(lambda event, inner: json.dumps(
                       {"eventType": event, "AccessControllerEvent": inner,
                        "ANPR": inner, "dateTime": inner}).encode(),
                       st.sampled_from(["AccessControllerEvent", "ANPR", "VMD", "heartBeat"]),
                       _json_values()))


def _never_raises_but_refused(name: str, content_type: str, body: bytes) -> None:
    profile = profile_for(name, MAPPING if name == "generic-json" else None)
    try:
        parsed = profile.parse(content_type, body, ARRIVAL)
    except Refused as exc:
        assert exc.status in (400, 415)
        return
    profile.answer(parsed, False)
    if parsed.reading is not None:
        assert parsed.reading.fields
        for value in parsed.reading.fields.values():
            assert type(value) in (str, int, float, bool)
            if type(value) is str:
                value.encode("utf-8")


@settings(max_examples=400, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(PROFILES)), content_type=CONTENT_TYPES, body=BODIES)
def test_fuzzed_bodies_are_decoded_or_refused(name: str, content_type: str, body: bytes) -> None:
    _never_raises_but_refused(name, content_type, body)


@pytest.mark.soak
@settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(PROFILES)), content_type=CONTENT_TYPES, body=BODIES)
def test_fuzzed_bodies_soak(name: str, content_type: str, body: bytes) -> None:
    _never_raises_but_refused(name, content_type, body)
