"""A Hikvision terminal's access events follow docs/schema.md's access-event contract, on
the stream and from the backfill, and the documented governance queries count them
right in a real InfluxDB 1.x.

Found by the outside probe: event_stream wrote tags ``event, major, minor, reader`` with
no ``kind``, no ``result`` and no ``event_id``, so the entries query counted refused
swipes as entries and no face passage at all. Real gateway in-process (file and
influxdb1 sinks), the project's terminal simulator on loopback.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.event_stream.sim import HikvisionSim
from drivers.event_stream.tests.harness import Point, running
from gateway.pseudonym import Pseudonymizer
from tests.support import governance as gov
from tests.support.servers import InfluxDB1

DOC = Path(__file__).resolve().parents[3] / "docs" / "schema.md"
KEY = "terminal-contract-key-0123456789"
HIDE = Pseudonymizer(KEY.encode(), 16)

# (card, employee, subEventType): what the terminal logs, in order
LIVE = [("0004000001", "1001", 0x01),   # card verified
        ("0004000002", "1002", 0x09),   # no such card: refused
        ("0004000003", "1003", 0x4B),   # face verified (the person's card is not the id)
        ("0004000004", "1004", 0x4C),   # face refused
        ("0004000005", "1005", 0x19)]   # the door opened: not a passage
MISSED = [("0004000006", "1006", 0x01),  # while the stream was down: backfilled
          ("0004000007", "1007", 0x06)]  # card without the right for this door


def config_text(tmp_path: Path, port: int, influx: InfluxDB1, db: str) -> Path:
    key = tmp_path / "privacy.key"
    key.write_text(KEY)
    key.chmod(0o600)
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-acs, site: acs-site, data_dir: data}\n"
        "buffer: {flush_interval: 50ms}\n"
        f"privacy: {{key_file: {key}}}\n"
        f"sinks: [{{type: file}}, {{type: influxdb1, name: influx, url: '{influx.url}', "
        f"database: {db}}}]\n"
        "devices:\n"
        f"  - {{id: lobby, driver: event_stream, profile: hikvision, host: 127.0.0.1, "
        f"port: {port}, username: admin, password: hik-pass, reconnect_max: 1s, "
        "backfill: true, pseudonymize: [card, person, holder], "
        "tags: {gate: north, direction: in}}\n")
    return config


def expected_shape(card: str, employee: str, minor: int, serial: int) -> tuple[
        dict[str, str], dict[str, object]]:
    kind, result = {0x01: ("card", "granted"), 0x09: ("card", "denied"),
                    0x06: ("card", "denied"), 0x4B: ("face", "granted"),
                    0x4C: ("face", "denied")}.get(minor, (None, None))
    tags = {"reader": "1", "door": "1", "gate": "north", "direction": "in"}
    fields: dict[str, object] = {"event_id": str(serial), "major_event": 5,
                                 "sub_event": minor, "serial": serial}
    if kind == "card":  # the card is the credential; the employee number behind it
        fields |= {"card": HIDE(card), "holder": HIDE(employee)}
    elif kind == "face":  # the employee number is the credential; no card number
        fields["person"] = HIDE(employee)
    else:  # not a verification: whoever it was stays pseudonymised
        fields["holder"] = HIDE(employee)
    if kind is not None:
        assert result is not None
        tags |= {"kind": kind, "result": result}
    return tags, fields


def shape(point: Point) -> tuple[dict[str, str], dict[str, object]]:
    tags = {k: v for k, v in point.tags.items() if k not in ("site", "gateway", "device")}
    fields: dict[str, object] = {k: v for k, v in point.fields.items()
                                 if not k.endswith("_key")
                                 and k not in ("verify_mode", "mask", "name_present", "attendance")}
    return tags, fields


async def test_terminal_events_follow_the_contract_and_the_queries_count_them(
        tmp_path: Path, influx1: InfluxDB1) -> None:
    db = "access_contract"
    influx1.create_database(db)
    sim = HikvisionSim()
    await sim.start()
    config = config_text(tmp_path, sim.port, influx1, db)
    records = []
    try:
        async with running(config) as gw:
            await gw.until(lambda: sim.open_streams == 1, what="stream")
            records += [sim.swipe(c, e, minor=m) for c, e, m in LIVE]
            await gw.until(lambda: len(gw.points("access_event")) == len(LIVE), what="live")
            await asyncio.sleep(0.3)  # the backfill position is saved after the commit
            await sim.stop()
            await gw.until(lambda: gw.status("lobby").state == "offline", what="outage")
            records += [sim.swipe(c, e, minor=m, on_stream=False) for c, e, m in MISSED]
            await sim.start()
            await gw.until(lambda: len(gw.points("access_event")) == len(LIVE + MISSED),
                           what="backfilled")
            points = gw.points("access_event")

            def delivered() -> bool:
                rows = influx1.select('SELECT COUNT("event_id") FROM "access_event"', db)
                return bool(rows) and rows[0]["count"] == len(LIVE + MISSED)
            await gw.until(delivered, what="delivered to InfluxDB")
    finally:
        await sim.stop()

    by_serial = {int(str(p.fields["event_id"])): p for p in points}
    for record in records:
        want = expected_shape(record["cardNo"], record["employeeNoString"], record["minor"],
                              record["serialNo"])
        assert shape(by_serial[record["serialNo"]]) == want, record["minor"]

    # The documented entries query: refused swipes and the door are no entries; the
    # face is counted; the backfilled swipe too.
    entries = influx1.select(gov.documented(DOC, "influxql")["entries_exits_per_gate"], db)
    assert sum(r["cards"] or 0 for r in entries) == 2
    assert sum(r["faces"] or 0 for r in entries) == 1
    assert {(r["gate"], r["direction"]) for r in entries} == {("north", "in")}
    passages = gov.passages_from_influxql(
        influx1.select(gov.documented(DOC, "influxql")["passages"], db))
    inside = gov.inside_now(passages)
    assert inside["people"] == {HIDE("0004000001"), HIDE("0004000006"), HIDE("1003")}
