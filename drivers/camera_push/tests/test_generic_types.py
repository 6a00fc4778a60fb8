"""generic-json fields keep one type per field (InfluxDB refuses every later point of a
field that arrives as another type), values that do not fit a field's ``type`` and
unusable tags are refused one by one: counted, logged once per kind, dead-lettered,
never stored as another type and never dropped without a trace (an outside probe:
``20`` then ``20.5`` stored as ``20i`` and ``20.5``, 4 of 7 points refused by the store
while every post was answered ok; tags over 256 characters dropped silently)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest

from drivers.camera_push import sim
from drivers.camera_push.tests.harness import GatewayThread, config_text, wait_until
from tests.e2e import wait_drained
from tests.support.servers import InfluxDB1, free_port


def post(gw: GatewayThread, path: str, document: object) -> sim.Reply:
    return gw.run(sim.post(gw.port, path, json.dumps(document).encode(), "application/json"))


def test_untyped_numbers_are_one_type_in_influxdb(tmp_path: Path, influx1: InfluxDB1) -> None:
    db = f"push_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(f"""\
gateway: {{id: gw-types, site: s, data_dir: data}}
buffer: {{flush_interval: 50ms}}
sinks: [{{type: influxdb1, name: i1, url: '{influx1.url}', database: {db}}}]
http: {{listen: '127.0.0.1:{port}'}}
devices:
  - id: pk
    driver: camera_push
    profile: generic-json
    token: tok
    mapping: {{measurement: sensor, fields: {{level: $.level}}, event_id: $.seq,
               time: $.ts, time_format: ms}}
""")
    levels = [20, 20.5, 21, 22.25, 23]
    with GatewayThread(config, port) as gw:
        for n, level in enumerate(levels):
            reply = post(gw, "/push/pk/tok", {"seq": n, "ts": 1772583330000 + n, "level": level})
            assert reply.status == 200
        wait_drained(tmp_path / "data" / "buffer.db", ["i1"])
    rows = influx1.select('SELECT "level" FROM "sensor"', db)
    assert [r["level"] for r in rows] == [float(x) for x in levels], rows


@pytest.fixture
def typed(tmp_path: Path) -> GatewayThread:
    path, port = config_text(tmp_path, """\
http: {listen: '127.0.0.1:PORT'}
devices:
  - id: pk
    driver: camera_push
    profile: generic-json
    token: tok
    mapping:
      measurement: sensor
      fields:
        level: {path: $.level, type: float}
        count: {path: $.count, type: int}
        open: {path: $.open, type: bool}
        label: {path: $.label, type: string}
      payload_tags: {bay: $.bay}
      event_id: $.seq
""")
    return GatewayThread(path, port)


def test_a_value_that_does_not_fit_its_type_is_refused_alone(
        typed: GatewayThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "iotgw.camera_push")
    with typed as gw:
        posts = [
            {"seq": 1, "level": 20, "count": 3, "open": 1, "label": 7},   # all fit
            {"seq": 2, "level": "n/a", "count": 4},                       # level refused
            {"seq": 3, "level": 20.5, "count": 4.5},                      # count refused
            {"seq": 4, "level": "21.5", "count": "5", "open": "maybe"},   # open refused
            {"seq": 5, "level": "n/a"},                                   # nothing left
            {"seq": 6, "level": [1], "count": True},                      # level refused
        ]
        statuses = [post(gw, "/push/pk/tok", p).status for p in posts]
        assert statuses == [200, 200, 200, 200, 400, 200]
        wait_until(lambda: len(gw.lines(b"sensor")) == 5, "five events stored")
        lines = sorted(gw.lines(b"sensor"), key=lambda x: x.split(b" ")[-1])
        fields = [dict(f.split(b"=", 1) for f in x.split(b" ")[1].split(b",")) for x in lines]
        assert fields[0] == {b"level": b"20", b"count": b"3i", b"open": b"true",
                             b"label": b'"7"'}
        assert [f.get(b"level") for f in fields] == [b"20", None, b"20.5", b"21.5", None]
        assert [f.get(b"count") for f in fields] == [b"3i", b"4i", None, b"5i", b"1i"]
        assert b"open" not in fields[3]
        counters = gw.counters("pk")
        assert counters["wrong_type"] == 5  # 4 values left out + 1 post refused
        assert counters.get("duplicate", 0) == 0
        # a retry of a post with a refused value counts nothing again
        assert post(gw, "/push/pk/tok", posts[1]).status == 200
        assert gw.counters("pk")["wrong_type"] == 5
    logged = [r.getMessage() for r in caplog.records if "wrong_type" in r.getMessage()]
    assert len(logged) == 1, logged  # once per kind and device
    assert "n/a" not in logged[0]
    assert len(gw.dead) == 5 and all("wrong_type" in d.reason for d in gw.dead)


def test_unusable_tags_are_counted_and_logged(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "iotgw.camera_push")
    path, port = config_text(tmp_path, """\
http: {listen: '127.0.0.1:PORT'}
devices:
  - id: pk
    driver: camera_push
    profile: generic-json
    token: tok
    mapping: {measurement: sensor, fields: {v: $.v}, payload_tags: {bay: $.bay}}
""")
    with GatewayThread(path, port) as gw:
        for n, bay in enumerate(["B-1", "x" * 257, "", "B\n2", " ", {"a": 1}, 12]):
            assert post(gw, "/push/pk/tok", {"v": n, "bay": bay}).status == 200
        wait_until(lambda: len(gw.lines(b"sensor")) == 7, "every event stored")
        tagged = [x.split(b" ")[0] for x in gw.lines(b"sensor") if b",bay=" in x]
        assert sorted(t.split(b",bay=")[1].split(b",")[0] for t in tagged) == [b"12", b"B-1"]
        assert gw.counters("pk")["invalid_tag"] == 5
    logged = [r.getMessage() for r in caplog.records if "invalid_tag" in r.getMessage()]
    assert len(logged) == 1 and "tag 'bay'" in logged[0], logged
