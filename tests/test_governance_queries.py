"""The governance queries of docs/schema.md, run against real stores on a compound's data.

The data is what the gateway writes: readings shaped as the drivers emit them (raw card
numbers, plates and person numbers included) go through the real Pipeline, which
pseudonymises them and adds the installer and core tags, and the committed lines are
sent by the gateway's own sinks to InfluxDB 1.x and to a private VictoriaMetrics (private
so that the documented queries run verbatim, without a site filter added). Each query
text is read out of docs/schema.md; the two-step ones are finished by
tests/support/governance.py, as the platform would.

The compound: gate ``north`` (card readers in and out, a face terminal), gate
``east-2`` (plate cameras in and out), gate ``south`` behind a second gateway (seeded
random card traffic over two days); alarms on meters and a door in buildings 1 and 2.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import AsyncBuffer, Buffer
from gateway.health.selfreport import readings_from
from gateway.pipeline import Pipeline
from gateway.pseudonym import Pseudonymizer, pseudonym_key
from gateway.reading import Reading
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
from gateway.sinks.influxdb1 import InfluxDB1Sink, InfluxDB1SinkConfig
from gateway.stats import GatewayStats
from tests.support import governance as gov
from tests.support.servers import InfluxDB1, VictoriaMetrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
KEY = b"governance-test-site-key-0123456789"
MIN = 60 * 10**9
HOUR = 60 * MIN
DAY = 24 * HOUR
WINDOW = 5 * MIN
SITE = "gov-compound"
HIDE = Pseudonymizer(KEY)

# Installer tags per device (gateway config `tags:`); what each driver adds is below.
MAIN_DEVICES: dict[str, dict[str, str]] = {
    "n-in": {"gate": "north", "direction": "in", "building": "1"},    # OSDP card reader
    "n-out": {"gate": "north", "direction": "out", "building": "1"},  # OSDP card reader
    "n-face": {"gate": "north", "building": "1"},                     # face terminal
    "e-in": {"gate": "east-2", "direction": "in"},                    # plate camera
    "e-out": {"gate": "east-2", "direction": "out"},                  # plate camera
    "k-in": {"gate": "king's \"gate\"", "direction": "in"},        # quotes in a name
    "b1-meter": {"building": "1"}, "b2-meter": {"building": "2"}, "b2-door": {"building": "2"},
}
SOUTH_DEVICES = {"s-in": {"gate": "south", "direction": "in"},
                 "s-out": {"gate": "south", "direction": "out"}}

A, B, C, K = "0004123456", "0004999001", "0007770002", "0005550001"   # cards
P1, P2 = "emp-1001", "emp-1002"                       # face terminal person numbers
V1, V2 = "粤B12345", "粤B67890"                        # plates
EVENTS: list[tuple[int, str, str, str]] = [  # (minutes ago, device, raw subject, result)
    (21600, "n-in", A, ""),        # 15 days ago: outside the 14-day trace
    (18720, "n-in", A, ""),        # 13 days ago
    (18722, "n-out", B, ""),       # 2 min later, same gate: a contact
    (600, "n-out", A, ""),
    (603, "n-in", B, ""),          # 3 min: a contact
    (598, "n-face", P2, "denied"),  # 2 min, refused: still a contact, never inside
    (599, "e-in", V1, "granted"),  # 1 min, other gate: not a contact
    (607, "n-in", C, ""),          # 7 min: not a contact
    (100, "n-out", B, ""),
    (61, "n-face", P1, "granted"),  # 1 min before A's entry: a contact
    (60, "n-in", A, ""),
    (300, "e-in", V2, "granted"),
    (30, "e-out", V1, "granted"),
    (45, "k-in", K, ""),
    (44, "k-in", C, ""),           # a contact of K at a gate whose name needs quoting
]


def driver_reading(device: str, raw: str, result: str, t: int) -> Reading:
    """What each driver emits for one event (before the pipeline pseudonymises it)."""
    if device in ("n-in", "n-out", "k-in", "s-in", "s-out"):  # drivers/osdp/events.py card_read
        return Reading("access_event", {"reader": "0", "kind": "card"},
                       {"card": raw, "bits": 34}, t)
    if device == "n-face":  # the HTTP terminal drivers, as docs/schema.md asks of them
        return Reading("access_event", {"kind": "face", "direction": "in", "result": result},
                       {"person": raw, "event_id": f"sn-{t}"}, t)
    return Reading("access_event", {"kind": "plate", "result": result},  # plate cameras
                   {"plate": raw, "confidence": 0.93, "event_id": f"p-{t}"}, t)


def alarm_reading(rule: str, severity: int, state: str, seq: int, t: int) -> Reading:
    """One alarm transition as the ``alarm`` series has it (tags rule, severity; the
    pipeline adds device and installer tags)."""
    active = state in ("active_unacked", "active_acked")
    acked = state not in ("active_unacked", "cleared_unacked")
    return Reading("alarm", {"rule": rule, "severity": str(severity)},
                   {"active": int(active), "acked": int(acked), "seq": seq, "state": state}, t)


def status_snapshot(gateway_id: str, devices: dict[str, str], now: float) -> dict[str, Any]:
    """The part of gateway/health/snapshot.py's snapshot that self-report reads."""
    return {
        "gateway": {"id": gateway_id, "now": now, "uptime_seconds": 3600.0},
        "buffer": {"ok": True, "depth_lines": 0, "bytes_held": 0, "dropped_full_total": 0,
                   "disk_free_bytes": 10**9},
        "readings": {"in": 0, "committed": 0, "dropped": {}, "pending": 0},
        "loop": {"lag_seconds": 0.0, "stalls_total": 0},
        "clock": {"before_build": False},
        "sinks": {},
        "devices": {d: {"state": s, "counters": {"timeouts": 0}, "last_seen": now - 5}
                    for d, s in devices.items()},
    }


@dataclass
class Compound:
    now: int
    lines: list[bytes] = field(default_factory=list)
    south: list[tuple[int, str, str]] = field(default_factory=list)
    """(time, device, raw card) of the seeded random traffic at the south gate."""


async def committed(gateway_id: str, devices: dict[str, dict[str, str]],
                    submissions: list[tuple[str, list[Reading]]], data: Path) -> list[bytes]:
    """Readings through the gateway's own pipeline; the lines it committed."""
    buffer = AsyncBuffer(Buffer(data / f"{gateway_id}.db", max_bytes=64 * 1024**2,
                                when_full="drop_oldest"))
    await buffer.open()
    await buffer.register_sinks(["out"])
    pipeline = Pipeline(buffer, GatewayStats(), site=SITE, gateway_id=gateway_id,
                        flush_interval=0.05, max_pending=100_000)
    pipeline.set_pseudonymizer(HIDE)
    for device, tags in devices.items():
        pipeline.set_device(device, tags, pseudonymize=["card", "person", "plate"])
    for device, readings in submissions:
        await pipeline.submit(device, readings)
    await pipeline.flush()
    batch = await buffer.read("out", 1_000_000)
    await buffer.close()
    assert batch is not None
    return batch.payload.split(b"\n")


async def build_compound(data: Path) -> Compound:
    now = time.time_ns()
    compound = Compound(now)
    main: list[tuple[str, list[Reading]]] = []
    for minutes, device, raw, result in EVENTS:
        t = now - minutes * MIN
        main.append((device, [driver_reading(device, raw, result, t)]))
    # device_status: half an hour ago all online; a minute ago n-out offline, n-face error
    states = {d: "online" for d in ("n-in", "n-out", "n-face", "e-in", "e-out")}
    for minutes, update in ((30, {}), (1, {"n-out": "offline", "n-face": "error"})):
        t = now - minutes * MIN
        for device, readings in readings_from(status_snapshot("gw-main", {**states, **update},
                                                              t / 1e9), t).items():
            main.append((device, readings))
    alarms = [  # (minutes ago, device, rule, severity, state, seq)
        (90, "b1-meter", "over_power", 2, "active_unacked", 1),
        (80, "b1-meter", "over_power", 2, "active_acked", 2),      # active, acknowledged
        (50, "b1-meter", "tamper", 1, "active_unacked", 1),
        (45, "b1-meter", "tamper", 1, "cleared_unacked", 2),
        (40, "b1-meter", "tamper", 1, "normal", 3),                 # over
        (300, "b2-meter", "over_power", 2, "active_unacked", 1),
        (200, "b2-meter", "over_power", 3, "cleared_unacked", 2),  # severity edited: new series
        (30, "b2-door", "door_forced", 1, "active_unacked", 1),
    ]
    for minutes, device, rule, severity, state, seq in alarms:
        main.append((device, [alarm_reading(rule, severity, state, seq,
                                            now - minutes * MIN)]))
    compound.lines += await committed("gw-main", MAIN_DEVICES, main, data)

    # The south gate's gateway: two days of card traffic, silent for the last two hours.
    rng = random.Random(13)
    south: list[tuple[str, list[Reading]]] = []
    for _ in range(300):
        minutes = rng.choice([m for m in range(130, 2880) if abs(m - 1440) > 10])
        device = rng.choice(["s-in", "s-out"])
        raw = f"900{rng.randrange(40):04d}"
        t = now - minutes * MIN - rng.randrange(60 * 10**9)
        south.append((device, [driver_reading(device, raw, "", t)]))
        compound.south.append((t, device, raw))
    for minutes in (180, 120):
        t = now - minutes * MIN
        for device, readings in readings_from(status_snapshot(
                "gw-south", {"s-in": "online", "s-out": "online"}, t / 1e9), t).items():
            south.append((device, readings))
    compound.lines += await committed("gw-south", SOUTH_DEVICES, south, data)
    return compound


def all_passages(compound: Compound) -> list[tuple[int, str, str, str, str, str]]:
    """(time, gate, direction, kind, pseudonym, result) of every event, from the scenario
    itself (not from a store): what the answers are checked against."""
    now, out = compound.now, []
    for minutes, device, raw, result in EVENTS:
        tags = MAIN_DEVICES[device]
        kind = {"n-face": "face", "e-in": "plate", "e-out": "plate"}.get(device, "card")
        direction = tags.get("direction", "in")
        out.append((now - minutes * MIN, tags["gate"], direction, kind, HIDE(raw), result))
    for t, device, raw in compound.south:
        out.append((t, "south", SOUTH_DEVICES[device]["direction"], "card", HIDE(raw), ""))
    return sorted(out)


@pytest.fixture(scope="module")
def compound(tmp_path_factory: pytest.TempPathFactory) -> Compound:
    return asyncio.run(build_compound(tmp_path_factory.mktemp("gov-data")))


@pytest.fixture(scope="module")
def store_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics(tmp_path_factory.mktemp("gov-vm")) as server:
        yield server


def expected_inside(compound: Compound) -> dict[str, set[str]]:
    last: dict[tuple[str, str], str] = {}
    for t, _gate, direction, kind, subject, result in all_passages(compound):
        if t > compound.now - 14 * DAY and result != "denied":
            last[(kind, subject)] = direction
    return {"people": {s for (k, s), d in last.items() if d == "in" and k != "plate"},
            "vehicles": {s for (k, s), d in last.items() if d == "in" and k == "plate"}}


# -- InfluxDB 1.x ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def influx_db(influx1: InfluxDB1, compound: Compound) -> str:
    db = "governance"
    influx1.create_database(db)

    async def send() -> None:
        sink = InfluxDB1Sink(InfluxDB1SinkConfig(type="influxdb1", url=influx1.url,
                                                 database=db))
        await sink.open()
        await sink.write(b"\n".join(compound.lines))
        await sink.close()
    asyncio.run(send())
    return db


def test_data_is_pseudonymised_before_any_store(compound: Compound) -> None:
    text = b"\n".join(compound.lines)
    for raw in (A, B, C, P1, P2, V1, V2):
        assert raw.encode() not in text
    assert f'card="{HIDE(A)}"'.encode() in text
    assert f"card_key={pseudonym_key(HIDE(A))}i".encode() in text
    assert b"access_event,building=1,device=n-in,direction=in,gate=north,gateway=gw-main," \
           b"kind=card,reader=0,site=gov-compound " in text


def test_influxql_entries_and_exits_per_gate_per_hour(influx1: InfluxDB1, influx_db: str,
                                                      compound: Compound) -> None:
    q = gov.documented(DOC, "influxql")["entries_exits_per_gate"]
    rows = influx1.select(q, influx_db)
    got: Counter[tuple[int, str, str, str]] = Counter()
    for row in rows:
        for column, kind in (("cards", "card"), ("faces", "face"), ("vehicles", "plate")):
            if row[column]:
                got[(row["time"], row["gate"], row["direction"], kind)] += row[column]
    want = Counter((t // HOUR * HOUR, gate, direction, kind)
                   for t, gate, direction, kind, _s, result in all_passages(compound)
                   if t > compound.now - DAY and result != "denied")
    assert got == want
    # the scenario's own north-gate figures, stated by hand
    assert sum(n for (_, g, d, k), n in got.items() if (g, d, k) == ("north", "in", "card")) == 3
    assert sum(n for (_, g, d, k), n in got.items() if (g, k) == ("north", "face")) == 1


def test_influxql_inside_now(influx1: InfluxDB1, influx_db: str, compound: Compound) -> None:
    q = gov.documented(DOC, "influxql")["passages"]
    inside = gov.inside_now(gov.passages_from_influxql(influx1.select(q, influx_db)))
    assert inside == expected_inside(compound)
    assert {HIDE(A), HIDE(C), HIDE(P1)} <= inside["people"]
    assert not {HIDE(B), HIDE(P2)} & inside["people"]
    assert inside["vehicles"] == {HIDE(V2)}


def test_influxql_contact_tracing(influx1: InfluxDB1, influx_db: str,
                                  compound: Compound) -> None:
    queries = gov.documented(DOC, "influxql")
    own, found = gov.trace_influxql(lambda q: influx1.select(q, influx_db), queries,
                                    HIDE(A), WINDOW)
    now = compound.now
    assert [(p.time_ns, p.gate, p.direction) for p in own] == [
        (now - 18720 * MIN, "north", "in"), (now - 600 * MIN, "north", "out"),
        (now - 60 * MIN, "north", "in")]
    assert [(c.subject, c.gate, c.time_ns) for c in found] == [
        (HIDE(B), "north", now - 18722 * MIN), (HIDE(B), "north", now - 603 * MIN),
        (HIDE(P2), "north", now - 598 * MIN), (HIDE(P1), "north", now - 61 * MIN)]
    # a plate traced the same way: V1's passages at east-2 and nobody near them
    own_v, found_v = gov.trace_influxql(lambda q: influx1.select(q, influx_db), queries,
                                        HIDE(V1), WINDOW)
    assert [(p.gate, p.kind) for p in own_v] == [("east-2", "plate")] * 2 and found_v == []
    own_k, found_k = gov.trace_influxql(lambda q: influx1.select(q, influx_db), queries,
                                        HIDE(K), WINDOW)
    assert [p.gate for p in own_k] == ['king\'s "gate"']
    assert [(c.subject, c.gate) for c in found_k] == [(HIDE(C), 'king\'s "gate"')]


def test_influxql_devices_offline(influx1: InfluxDB1, influx_db: str,
                                  compound: Compound) -> None:
    queries = gov.documented(DOC, "influxql")
    offline = {(r["gateway"], r["device"], r["state"])
               for r in influx1.select(queries["devices_offline"], influx_db)}
    assert offline == {("gw-main", "n-out", "offline"), ("gw-main", "n-face", "error")}
    silent = gov.silent_devices(influx1.select(queries["devices_last_report"], influx_db),
                                time.time_ns(), 3 * MIN)
    assert silent == [("gw-south", "s-in"), ("gw-south", "s-out")]


def test_influxql_active_alarms_by_building(influx1: InfluxDB1, influx_db: str) -> None:
    queries = gov.documented(DOC, "influxql")
    per_building = {r["building"]: r["active"]
                    for r in influx1.select(queries["active_alarms_per_building"], influx_db)}
    assert per_building == {"1": 1, "2": 1}
    listed = {(r["building"], r["rule"], r["device"], r["severity"], r["acked"])
              for r in influx1.select(queries["active_alarms"], influx_db)}
    assert listed == {("1", "over_power", "b1-meter", "2", 1),
                      ("2", "door_forced", "b2-door", "1", 0)}


# -- VictoriaMetrics ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def vm(store_vm: VictoriaMetrics, compound: Compound) -> VictoriaMetrics:

    async def send() -> None:
        sink = InfluxDBSink(InfluxDBSinkConfig(type="influxdb", url=store_vm.url, bucket="b",
                                               token="t"))
        await sink.open()
        await sink.write(b"\n".join(compound.lines))
        await sink.close()
    asyncio.run(send())
    store_vm.flush()
    return store_vm


def metricsql(vm: VictoriaMetrics, query: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = vm.query(query)["data"]["result"]
    return result


def test_metricsql_entries_and_exits_per_gate_per_hour(vm: VictoriaMetrics,
                                                       compound: Compound) -> None:
    q = gov.documented(DOC, "promql")["entries_exits_per_gate"]
    now_s = compound.now // 10**9
    end = (now_s // 3600 + 1) * 3600
    start = end - 24 * 3600
    vm.flush()
    answer = json.loads(vm.get("/api/v1/query_range", query=q, start=str(start),
                               end=str(end), step="1h"))
    got: Counter[tuple[int, str, str, str]] = Counter()
    for series in answer["data"]["result"]:
        m = series["metric"]
        for t, value in series["values"]:
            if float(value):
                got[(int(t), m["gate"], m["direction"], m["kind"])] += int(float(value))
    # a point at T counts the hour (T-1h, T]
    want = Counter((-(-t // HOUR) * 3600, gate, direction, kind)
                   for t, gate, direction, kind, _s, result in all_passages(compound)
                   if (start - 3600) * 10**9 < t <= end * 10**9 and result != "denied")
    assert got == want
    assert sum(n for (_, g, d, k), n in got.items() if (g, d, k) == ("north", "in", "card")) == 3


def test_metricsql_inside_now(vm: VictoriaMetrics, compound: Compound) -> None:
    selector = gov.documented(DOC, "promql")["passages_export"]
    series = vm.export(selector, start=compound.now / 1e9 - 14 * 86400)
    inside = gov.inside_now(gov.passages_from_export(series))
    want = expected_inside(compound)
    assert inside == {group: {pseudonym_key(s) for s in subjects}
                      for group, subjects in want.items()}
    assert pseudonym_key(HIDE(V2)) in inside["vehicles"]


def test_metricsql_contact_tracing(vm: VictoriaMetrics, compound: Compound) -> None:
    queries = gov.documented(DOC, "promql")
    key = pseudonym_key(HIDE(A))
    assert key is not None
    gates = [r["metric"]["gate"] for r in metricsql(vm, gov.fill(
        queries["trace_gates"], str, key=key))]
    assert gates == ["north"]
    selector = gov.fill(queries["trace_export"], str, gates=gov.regex_alternation(gates))
    series = vm.export(selector, start=compound.now / 1e9 - 14 * 86400 - 300)
    own, found = gov.trace_export(series, key, WINDOW)
    now_ms = compound.now // 10**6 * 10**6  # VictoriaMetrics keeps milliseconds
    assert [(p.time_ns, p.direction) for p in own] == [
        (now_ms - 18720 * MIN, "in"), (now_ms - 600 * MIN, "out"), (now_ms - 60 * MIN, "in")]
    assert [(c.subject, c.time_ns) for c in found] == [
        (pseudonym_key(HIDE(B)), now_ms - 18722 * MIN),
        (pseudonym_key(HIDE(B)), now_ms - 603 * MIN),
        (pseudonym_key(HIDE(P2)), now_ms - 598 * MIN),
        (pseudonym_key(HIDE(P1)), now_ms - 61 * MIN)]
    # a plate: both of V1's passages at east-2 found, and east-2 only
    v1 = pseudonym_key(HIDE(V1))
    assert [r["metric"]["gate"] for r in metricsql(vm, gov.fill(
        queries["trace_gates"], str, key=v1))] == ["east-2"]
    selector = gov.fill(queries["trace_export"], str, gates=gov.regex_alternation(["east-2"]))
    own_v, found_v = gov.trace_export(vm.export(selector), v1 or 0, WINDOW)
    assert len(own_v) == 2 and found_v == []
    k = pseudonym_key(HIDE(K))
    gates = [r["metric"]["gate"] for r in metricsql(vm, gov.fill(
        queries["trace_gates"], str, key=k))]
    assert gates == ['king\'s "gate"']
    selector = gov.fill(queries["trace_export"], str, gates=gov.regex_alternation(gates))
    _, found_k = gov.trace_export(vm.export(selector), k or 0, WINDOW)
    assert [(c.subject, c.gate) for c in found_k] == [(pseudonym_key(HIDE(C)), gates[0])]


def test_metricsql_devices_offline(vm: VictoriaMetrics) -> None:
    queries = gov.documented(DOC, "promql")
    offline = {(r["metric"]["gateway"], r["metric"]["device"])
               for r in metricsql(vm, queries["devices_offline"])}
    assert offline == {("gw-main", "n-out"), ("gw-main", "n-face")}
    silent = {(r["metric"]["gateway"], r["metric"]["device"]): float(r["value"][1])
              for r in metricsql(vm, queries["devices_silent"])}
    assert set(silent) == {("gw-south", "s-in"), ("gw-south", "s-out")}
    assert all(7200 <= age < 7200 + 600 for age in silent.values())


def test_metricsql_active_alarms_by_building(vm: VictoriaMetrics) -> None:
    q = gov.documented(DOC, "promql")["active_alarms_per_building"]
    per_building = {r["metric"]["building"]: float(r["value"][1]) for r in metricsql(vm, q)}
    assert per_building == {"1": 1.0, "2": 1.0}
