"""``iotgw rules test`` replays recorded data in simulated time; ``iotgw alarms`` reads the
journal offline."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.alarms.replay import LineError, parse_line
from gateway.cli import main
from gateway.lineprotocol import encode_many
from gateway.reading import Reading

CONFIG = """\
gateway: {id: gw, site: s, data_dir: data}
mqtt: {host: 127.0.0.1, base_topic: t/gw}
devices:
  - {id: wm-1, driver: mqtt, topic: meters/wm-1, measurement: water_meter,
     fields: {flow: $.flow, total: $.total}}
rules:
  - id: leak
    devices: [wm-*]
    when: "flow > 0"
    for: 3h
    message: "flow {flow} m3/h for 3 h"
  - id: night-flow
    when: "flow > 0.5"
    active: "01:00-05:00"
    timezone: UTC
"""


def write_history(path: Path) -> None:
    """A water meter that starts leaking: 4 h of 0.2 m3/h from 00:00 UTC, then zero."""
    start = 1_790_000_000 - 1_790_000_000 % 86400  # a midnight, UTC
    readings = [Reading("water_meter", {"device": "wm-1", "site": "s"},
                        {"flow": 0.2 if minute < 240 else 0.0, "total": minute * 0.1},
                        (start + minute * 60) * 10**9)
                for minute in range(300)]
    # a night-time burst at 02:00, and a line that is not line protocol
    readings.append(Reading("water_meter", {"device": "wm-1"}, {"flow": 2.0},
                            (start + 7200 + 30) * 10**9))
    lines = encode_many(sorted(readings, key=lambda r: r.time_ns))
    path.write_bytes(b"\n".join(lines) + b"\nnot line protocol\n")


def test_rules_test_replays_hours_of_data_in_simulated_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG)
    history = tmp_path / "week.lp"
    write_history(history)
    assert main(["rules", "test", str(config), "--replay", str(history), "--json"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [(e["rule"], e["cause"]) for e in events] == [
        ("night-flow", "raise"), ("night-flow", "clear"), ("leak", "raise"),
        ("leak", "clear")]
    leak = events[2]
    assert leak["at"] % 86400 == 3 * 3600  # 3 h after the flow began at midnight
    assert leak["message"] == "flow 0.2 m3/h for 3 h"
    assert events[3]["at"] % 86400 == 4 * 3600
    assert "skipped line 302: field without a value: 'line'" in captured.err
    assert "301 readings" in captured.err and "4 transitions" in captured.err


def test_rules_test_stamps_timers_when_they_fell_due_not_at_the_next_reading(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by the outside probe of session 7 (its rt/ replay): stale and count-expiry
    transitions were printed at the time of the next reading."""
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG.split("rules:")[0] + (
        "rules:\n  - {id: silent, devices: [wm-1], stale: 40s}\n"
        "  - {id: busy, devices: [wm-1], count: {n: 2, within: 60s}, when: 'flow > 1'}\n"))
    start = 1_795_800_000
    history = tmp_path / "in.lp"
    history.write_bytes(b"\n".join(encode_many([
        Reading("water_meter", {"device": "wm-1"}, {"flow": 2.0}, (start + t) * 10**9)
        for t in (0, 5, 300)])) + b"\n")
    assert main(["rules", "test", str(config), "--replay", str(history), "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["at"] - start, e["rule"], e["cause"]) for e in events] == [
        (5, "busy", "raise"), (45, "silent", "raise"), (60, "busy", "clear"),
        (300, "silent", "clear")]


def test_alarms_reads_the_journal_offline(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG)
    assert main(["alarms", str(config)]) == 1  # no buffer yet
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    conn = sqlite3.connect(tmp_path / "data" / "buffer.db")
    from gateway.alarms.journal import ensure_schema

    ensure_schema(conn)
    conn.execute("INSERT INTO alarm_state VALUES ('leak', 'wm-1', 'abc', 'active_acked', 3, 2, "
                 "0, 0.2, 'flow 0.2', 'd', '{}')")
    conn.execute("INSERT INTO alarm_journal (alarm_id, rule, device, seq, at, state, previous, "
                 "cause, client, severity, value, message) VALUES ('abc', 'leak', 'wm-1', 2, "
                 "60, 'active_acked', 'active_unacked', 'ack', 'Li Wei', 3, 0.2, '')")
    conn.commit()
    conn.close()
    assert main(["alarms", str(config)]) == 0
    out = capsys.readouterr().out
    assert "leak/wm-1: active_acked  sev 3  seq 2" in out
    assert "leak/wm-1  ack by Li Wei: active_unacked -> active_acked  seq 2" in out
    assert main(["alarms", str(config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["alarms"][0]["state"] == "active_acked"


@pytest.mark.parametrize(("line", "fields"), [
    ('m,t=a\\ b f=1i,g="x \\"y\\"",h=t 5', {"f": 1, "g": 'x "y"', "h": True}),
    ("m\\,x f=1.5 7", {"f": 1.5}),
])
def test_line_protocol_parser_round_trips_what_the_gateway_writes(
        line: str, fields: dict[str, object]) -> None:
    reading = parse_line(line)
    assert dict(reading.fields) == fields
    (again,) = encode_many([reading])
    assert parse_line(again.decode()) == reading


def test_line_protocol_parser_refuses_garbage() -> None:
    for bad in ("m", "m f 1", "m f=x 1", "m f=1 soon"):
        with pytest.raises(LineError):
            parse_line(bad)


def test_rules_test_from_a_file_that_is_not_a_buffer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by probing ``iotgw rules test --from-buffer`` with a data_dir holding some
    other SQLite file (or a damaged buffer): a traceback (no such table: chunks). Now
    exit 1 with what could not be read."""
    config = tmp_path / "gw.yaml"
    config.write_text(CONFIG)
    (tmp_path / "data").mkdir()
    conn = sqlite3.connect(tmp_path / "data" / "buffer.db")
    conn.execute("CREATE TABLE x (a)")
    conn.close()
    assert main(["rules", "test", str(config), "--from-buffer"]) == 1
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "data" / "buffer.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    assert main(["rules", "test", str(config), "--from-buffer"]) == 1
    assert "cannot read" in capsys.readouterr().err
