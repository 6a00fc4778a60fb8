"""The alarm outputs through the real engine, a real mosquitto and real stores.

An in-process gateway (``gateway.runtime.Gateway``) with rules in its config; readings go
in through ``Gateway.submit`` (what a driver calls), commands through ``cmd/alarm`` on the
broker. Checked: every state transition and command on the ops bus (retained state,
``alarms/events`` with the audit trail), the ``alarm`` series read back from
VictoriaMetrics and InfluxDB 1.x, a rule action writing an allow-listed point, and a
blocklist rule on a pseudonymised plate that never lets the raw plate reach the buffer,
the broker or the stores.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.alarms.model import AlarmAction, AlarmCommand, AlarmState
from gateway.cli import main
from gateway.health.statustable import fetch, format_status, status_url
from gateway.reading import Reading
from gateway.runtime import Gateway
from tests.e2e import wait_drained
from tests.gate_driver import WRITES
from tests.support.alarms import Watcher, ops_connected, running
from tests.support.servers import InfluxDB1, Mosquitto, VictoriaMetrics, free_port

pytestmark = pytest.mark.usefixtures("test_gate_driver")

ACL = """\
user gw
topic readwrite compound/#
topic readwrite homeassistant/#
user ops
topic read compound/#
topic read homeassistant/#
topic write compound/+/+/cmd/#
user spy
topic read #
"""
USERS = {"gw": "gw-secret", "ops": "ops-secret", "spy": "spy-secret"}


CLIENT_SUFFIX = uuid.uuid4().hex[:6]
"""One per test run: a reload's config must keep the same mqtt: section, or the gateway
restarts in place (gateway/restart.py)."""


def config_text(base: str, port: int, sinks: str, rules: str, devices: str = "[]",
                extra: str = "") -> str:
    return (f"gateway: {{id: gw-ae, site: ae, data_dir: data}}\n"
            "buffer: {flush_interval: 50ms}\n"
            f"sinks:\n{sinks}"
            f"mqtt: {{host: 127.0.0.1, port: {port}, username: gw, password: gw-secret, "
            f"base_topic: {base}, client_id: ae-{CLIENT_SUFFIX}, stats_interval: 1s, "
            "homeassistant: {enabled: true}}\n"
            f"devices: {devices}\n{extra}rules:\n{rules}")


async def submit(gateway: Gateway, device: str, measurement: str, **fields: Any) -> None:
    await gateway.submit(device, [Reading(measurement, {}, fields, time.time_ns())])


class Ops:
    """The operator's side of the ops bus: commands, and what came back."""

    def __init__(self, watcher: Watcher, base: str) -> None:
        self.w = watcher
        self.base = base
        self.sent = 0

    def events(self, rule: str | None = None, kind: str = "transition") -> list[dict[str, Any]]:
        return [e for e in self.w.on(f"{self.base}/alarms/events")
                if e["type"] == kind and (rule is None or e["rule"] == rule)]

    async def transitions(self, rule: str, n: int, what: str = "") -> list[dict[str, Any]]:
        return await self.w.wait(lambda: (lambda e: e if len(e) >= n else None)(
            self.events(rule)), what=what or f"{n} transitions of {rule}")

    async def command(self, action: str, rule: str, device: str, **extra: Any
                      ) -> dict[str, Any]:
        self.sent += 1
        ident = f"c{self.sent}"
        self.w.send(f"{self.base}/cmd/alarm", {"action": action, "rule": rule,
                                               "device": device, "client": "guard Wang",
                                               "id": ident, **extra})
        answers = await self.w.wait(lambda: [a for a in self.w.on(
            f"{self.base}/cmd/alarm/result") if a.get("id") == ident], what=f"{action} answer")
        answer: dict[str, Any] = answers[0]
        return answer

    def retained(self, rule: str, device: str) -> dict[str, Any]:
        states = self.w.on(f"{self.base}/alarms/{rule}/{device}")
        return states[-1] if states else {}


def retained_seq(ops: Ops, rule: str, seq: int) -> Callable[[], bool]:
    return lambda: ops.retained(rule, "meter-1").get("seq") == seq


async def test_every_transition_and_command_stored_in_both_stores(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], victoria: VictoriaMetrics,
        influx1: InfluxDB1) -> None:
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    db = f"alarms_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    site_rule = f"overvoltage{uuid.uuid4().hex[:6]}"  # unique series in the session stores
    sinks = (f"  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
             f"  - {{type: influxdb1, name: i1, url: '{influx1.url}', database: {db}}}\n")
    # The example rule verbatim (id aside), a latched tamper rule, and a leak rule
    # whose action closes an allow-listed valve.
    rules = f"""\
  - id: {site_rule}
    devices: ["meter-*"]            # device ids or globs; also by measurement or tags
    when: "voltage_l1 > 220"
    for: 2s                         # on-delay
    clear: "voltage_l1 < 215"       # or deadband + off_delay
    severity: 2                     # 1 (highest) .. 4
    message: "L1 voltage {{voltage_l1}} V"
  - id: tamper
    devices: ["reader-*"]
    when: "tamper == 1"
    latched: true
    severity: 1
    message: "reader tamper"
  - id: leak
    devices: ["water-*"]
    when: "flow_rate > 0.5"
    clear: "flow_rate < 0.1"
    actions:
      - {{on: raise, device: valve-1, point: close_valve, value: 1, min_interval: 0}}
      - {{on: clear, device: valve-1, point: close_valve, value: 0, min_interval: 0}}
"""
    config = tmp_path / "gw.yaml"
    health_port = free_port()
    config.write_text(config_text(
        base, broker.port, sinks, rules,
        devices="[{id: valve-1, driver: test_gate, allow_write: [close_valve]}]",
        extra=f"health: {{listen: '127.0.0.1:{health_port}'}}\n"))
    watcher = Watcher(broker.port, "ops", "ops-secret",
                      [f"{base}/alarms/#", f"{base}/cmd/+/result",
                       "homeassistant/binary_sensor/#"])
    ops = Ops(watcher, base)
    rule = site_rule
    WRITES.clear()
    try:
        async with running(config) as gateway:
            assert gateway.alarms is not None
            await watcher.wait(lambda: ops_connected(gateway), what="ops bus")
            # raise after the 2 s on-delay, not before
            await submit(gateway, "meter-1", "energy_meter", voltage_l1=230.5)
            t0 = time.monotonic()
            raised = (await ops.transitions(rule, 1, "raise"))[0]
            assert time.monotonic() - t0 >= 1.9
            assert (raised["cause"], raised["previous"], raised["state"]) == \
                ("raise", "normal", "active_unacked")
            assert raised["message"] == "L1 voltage 230.5 V" and raised["value"] == 230.5
            assert raised["severity"] == 2 and raised["seq"] == 1
            await watcher.wait(lambda: ops.retained(rule, "meter-1").get("seq") == 1,
                               what="retained raise")
            ha = watcher.on(f"homeassistant/binary_sensor/gw-ae/alarm_{rule}_meter-1/config")
            assert ha and ha[-1]["device_class"] == "problem"

            # what `iotgw status` and Prometheus see, from the running health endpoint
            snap = await asyncio.to_thread(fetch, status_url("127.0.0.1", health_port))
            assert snap["health"]["ready"] is True, "an alarm never makes a gateway unready"
            assert snap["alarms"]["active_by_severity"] == {"2": 1}
            assert snap["alarms"]["evaluations"] >= 1
            table = format_status(snap)
            assert "alarms: 1 active, 1 unacknowledged" in table
            assert rule in table and "L1 voltage 230.5 V" in table
            metrics = await asyncio.to_thread(
                urllib.request.urlopen, f"http://127.0.0.1:{health_port}/metrics")
            text = metrics.read().decode()
            assert 'iotgw_alarms_active{severity="2"} 1.0' in text
            assert 'iotgw_alarm_transitions_total{cause="raise"} 1.0' in text

            steps: list[tuple[str, Callable[[], Any], str, str]] = [
                ("ack", lambda: ops.command("ack", rule, "meter-1"), "ack", "active_acked"),
                ("clear while acked", lambda: submit(gateway, "meter-1", "energy_meter",
                                                     voltage_l1=210.0), "clear", "normal"),
                ("raise again", lambda: submit(gateway, "meter-1", "energy_meter",
                                               voltage_l1=231.0), "raise", "active_unacked"),
                ("clear unacked", lambda: submit(gateway, "meter-1", "energy_meter",
                                                 voltage_l1=200.0), "clear", "cleared_unacked"),
                ("ack cleared", lambda: ops.command("ack", rule, "meter-1"), "ack", "normal"),
                ("shelve 1h", lambda: ops.command("shelve", rule, "meter-1", **{"for": "1h"}),
                 "shelve", "shelved"),
                ("unshelve", lambda: ops.command("unshelve", rule, "meter-1"), "unshelve",
                 "normal"),
                ("out of service", lambda: ops.command("out_of_service", rule, "meter-1"),
                 "out_of_service", "out_of_service"),
                ("in service", lambda: ops.command("in_service", rule, "meter-1"),
                 "in_service", "normal"),
            ]
            for number, (what, act, cause, state) in enumerate(steps, start=2):
                answer = await act()
                if isinstance(answer, dict):
                    assert answer["ok"] is True, (what, answer)
                    assert answer["result"]["state"] == state, (what, answer)
                event = (await ops.transitions(rule, number, what))[number - 1]
                assert (event["cause"], event["state"], event["seq"]) == \
                    (cause, state, number), (what, event)
                if isinstance(answer, dict):
                    assert event["client"] == "guard Wang"
                await watcher.wait(retained_seq(ops, rule, number),
                                   what=f"retained after {what}")
            shelved = next(e for e in ops.events(rule) if e["cause"] == "shelve")
            assert shelved["shelved_until"] is not None

            # refused commands: answered, audited, no transition
            refused = await ops.command("reset", rule, "meter-1")
            assert refused["ok"] is False and "latched" in refused["error"]
            nothing = await ops.command("ack", rule, "meter-1")
            assert nothing["ok"] is False and "nothing to acknowledge" in nothing["error"]
            unknown = await ops.command("ack", "no-such-rule", "meter-1")
            assert unknown["ok"] is False and "unknown rule" in unknown["error"]

            # latched: stays active after the condition goes, until reset
            await submit(gateway, "reader-1", "access_event", tamper=1)
            await ops.transitions("tamper", 1, "tamper raise")
            await submit(gateway, "reader-1", "access_event", tamper=0)
            early = await ops.command("ack", "tamper", "reader-1")
            assert early["result"]["state"] == "active_acked"
            reset = await ops.command("reset", "tamper", "reader-1")
            assert reset["ok"] is True and reset["result"]["state"] == "normal", reset
            tamper = [(e["cause"], e["state"]) for e in await ops.transitions("tamper", 3)]
            assert tamper == [("raise", "active_unacked"), ("ack", "active_acked"),
                              ("reset", "normal")]

            # an action: the leak closes the valve on raise and opens it on clear
            await submit(gateway, "water-1", "water_meter", flow_rate=0.9)
            await ops.transitions("leak", 1, "leak raise")
            await submit(gateway, "water-1", "water_meter", flow_rate=0.0)
            await ops.transitions("leak", 2, "leak clear")
            actions = await watcher.wait(lambda: (lambda a: a if len(a) >= 2 else None)(
                ops.events("leak", kind="action")), what="action audit")
            assert [(a["trigger"], a["ok"], a["target"]["value"]) for a in actions] == \
                [("on_raise", True, 1), ("on_clear", True, 0)]
            assert WRITES == [("valve-1", "close_valve", 1), ("valve-1", "close_valve", 0)]

            audits = ops.events(kind="command")
            assert len(audits) == ops.sent, "every command is audited"
            assert [a["ok"] for a in audits].count(False) == 3
            assert all(a["client"] == "guard Wang" for a in audits)
            expected = [(e["seq"], e["state"]) for e in ops.events(rule)]
            assert len(expected) == 10
            await gateway.wait_committed()
            # drained while running: a stopping gateway leaves unsent lines for next time
            await asyncio.to_thread(wait_drained, tmp_path / "data" / "buffer.db",
                                    ["vm", "i1"])
    finally:
        watcher.close()

    # The alarm series, as each store sees it: one point per transition.
    rows = influx1.select(f"SELECT seq, state, active, acked FROM alarm WHERE rule = '{rule}' "
                          "ORDER BY time", db)
    assert [(r["seq"], r["state"]) for r in rows] == expected
    assert [(r["active"], r["acked"]) for r in rows][:2] == [(1, 0), (1, 1)]
    tagged = influx1.select(f'SELECT last(seq) FROM alarm WHERE rule = \'{rule}\' '
                            'GROUP BY "device", "severity"', db)
    assert [(r["device"], r["severity"], r["last"]) for r in tagged] == [("meter-1", "2", 10)]
    samples = victoria.samples(f'{{__name__=~"alarm_.*", rule="{rule}"}}')
    seq = next(v for k, v in samples.items() if k[0] == "alarm_seq")
    assert [int(v) for _, v in seq] == list(range(1, 11))
    active = next(v for k, v in samples.items() if k[0] == "alarm_active")
    assert [int(v) for _, v in active] == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]
    answer = victoria.query(f'max_over_time(alarm_seq{{rule="{rule}"}}[1h])')
    assert [float(r["value"][1]) for r in answer["data"]["result"]] == [10.0]


async def test_blocklisted_pseudonymised_plate_never_stored_raw(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto], victoria: VictoriaMetrics,
        influx1: InfluxDB1) -> None:
    """The plate is pseudonymised at the device; the blocklist file is hashed with the same
    key at load. The rule raises on the blocklisted plate, and the raw plate text appears
    nowhere: not in the buffer file, not on any broker topic, not in either store."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    blocked, passing = "粤B7Q5X9", "粤A11111"
    (tmp_path / "blocklist.txt").write_text(f"# stolen\n{blocked}\n京C00001\n")
    (tmp_path / "key").write_text("k" * 32)
    db = f"plates_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    rule = f"blocklisted{uuid.uuid4().hex[:6]}"
    sinks = (f"  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
             f"  - {{type: influxdb1, name: i1, url: '{influx1.url}', database: {db}}}\n")
    rules = f"""\
  - id: {rule}
    devices: ["barrier-*"]
    measurement: [vehicle_event]
    when: "plate in blocked"
    clear: "not (plate in blocked)"
    lists: {{blocked: {{file: blocklist.txt, field: plate}}}}
    severity: 1
    message: "blocklisted plate {{plate}} at the barrier"
"""
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(
        base, broker.port, sinks, rules,
        devices="[{id: barrier-1, driver: test_gate, pseudonymize: [plate]}]",
        extra=f"privacy: {{key_file: '{tmp_path / 'key'}'}}\n"))
    spy = Watcher(broker.port, "spy", "spy-secret", ["#"])
    ops = Ops(spy, base)
    try:
        async with running(config) as gateway:
            await spy.wait(lambda: ops_connected(gateway), what="ops bus")
            await submit(gateway, "barrier-1", "vehicle_event", plate=passing, confidence=0.9)
            await submit(gateway, "barrier-1", "vehicle_event", plate=blocked, confidence=0.8)
            raised = (await ops.transitions(rule, 1, "blocklist raise"))[0]
            assert raised["state"] == "active_unacked" and raised["severity"] == 1
            await submit(gateway, "barrier-1", "vehicle_event", plate=passing, confidence=0.9)
            cleared = (await ops.transitions(rule, 2, "blocklist clear"))[1]
            assert cleared["state"] == "cleared_unacked"
            hashed = raised["value"]
            assert isinstance(hashed, str) and hashed != blocked and hashed in raised["message"]
            assert len(ops.events(rule)) == 2, "the passing plates raised nothing"
            await gateway.wait_committed()
            await asyncio.to_thread(wait_drained, tmp_path / "data" / "buffer.db",
                                    ["vm", "i1"])
    finally:
        spy.close()
    raw = [blocked.encode(), passing.encode()]
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert files and not [p for p in files for r in raw if r in p.read_bytes()], \
        "a raw plate reached the gateway's files"
    published = [p for _, p, _ in spy.messages]
    assert published and not [p for p in published for r in raw if r in p], \
        "a raw plate crossed the broker"
    stored = influx1.query("SELECT * FROM vehicle_event, alarm", db)
    text = repr(stored).encode()
    assert hashed.encode() in text and not [r for r in raw if r in text]
    export = repr(victoria.export(f'{{rule="{rule}"}}')).encode() \
        + repr(victoria.export('{__name__=~"vehicle_event_.*", device="barrier-1"}')).encode()
    assert b"alarm_seq" in export and not [r for r in raw if r in export]
    assert not [r for r in raw if r.decode() in repr(influx1.select(
        f"SELECT * FROM alarm WHERE rule = '{rule}'", db))]


async def test_reload_starts_and_removes_rules(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """A gateway started without rules gets its first by a reload: the ops bus, the
    counters and the actions attach to the new engine. A reload that removes the rule
    announces the active alarm as removed and clears its retained topic and HA config."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    sinks = "  - {type: file, name: f}\n"
    device = "[{id: valve-1, driver: test_gate, allow_write: [close_valve]}]"
    rules = """\
  - id: leak
    devices: ["water-*"]
    when: "flow_rate > 0.5"
    clear: "flow_rate < 0.1"
    actions: [{on: raise, device: valve-1, point: close_valve, value: 1}]
"""
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(base, broker.port, sinks, "  []\n", devices=device))
    watcher = Watcher(broker.port, "ops", "ops-secret",
                      [f"{base}/alarms/#", "homeassistant/binary_sensor/#"])
    ops = Ops(watcher, base)
    WRITES.clear()
    try:
        async with running(config) as gateway:
            assert gateway.alarms is None
            await watcher.wait(lambda: ops_connected(gateway), what="ops bus")
            config.write_text(config_text(base, broker.port, sinks, rules, devices=device))
            assert await gateway.reload()
            assert gateway.alarms is not None
            await submit(gateway, "water-1", "water_meter", flow_rate=0.8)
            raised = (await ops.transitions("leak", 1, "raise after reload"))[0]
            assert raised["state"] == "active_unacked"
            await watcher.wait(lambda: ops.events("leak", kind="action"), what="action")
            assert WRITES == [("valve-1", "close_valve", 1)]
            ha = "homeassistant/binary_sensor/gw-ae/alarm_leak_water-1/config"
            await watcher.wait(lambda: watcher.on(ha), what="HA config")

            config.write_text(config_text(base, broker.port, sinks, "  []\n", devices=device))
            assert await gateway.reload()
            removed = (await ops.transitions("leak", 2, "removed"))[1]
            assert removed["cause"] == "removed" and removed["previous"] == "active_unacked"
            await watcher.wait(lambda: watcher.cleared(f"{base}/alarms/leak/water-1")
                               and watcher.cleared(ha), what="retained topics cleared")
    finally:
        watcher.close()


async def test_suppress_realarm_and_chatter_on_the_bus(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """The transitions the engine makes by itself: suppressed by an expression
    (maintenance mode) and back, re-alarm of an alarm left unacknowledged, chatter flagged;
    each on alarms/events with its retained state, and counted in /status."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    rules = """\
  - id: tank-high
    devices: ["tank-*"]
    when: "level > 5"
    clear: "level < 4"
    suppress: "maintenance == 1"
    realarm: 1s
    chatter: {transitions: 3, within: 1h}
"""
    config = tmp_path / "gw.yaml"
    health_port = free_port()
    config.write_text(config_text(base, broker.port, "  - {type: file, name: f}\n", rules,
                                  extra=f"health: {{listen: '127.0.0.1:{health_port}'}}\n"))
    watcher = Watcher(broker.port, "ops", "ops-secret",
                      [f"{base}/alarms/#", f"{base}/cmd/+/result"])
    ops = Ops(watcher, base)
    try:
        async with running(config) as gateway:
            await watcher.wait(lambda: ops_connected(gateway), what="ops bus")

            async def level(value: float, maintenance: int = 0) -> None:
                await submit(gateway, "tank-1", "tank", level=value, maintenance=maintenance)

            await level(7)
            await ops.transitions("tank-high", 1, "raise")
            await ops.transitions("tank-high", 2, "realarm")  # unacknowledged for 1 s
            await level(7, maintenance=1)
            await level(7, maintenance=0)
            causes = [(e["cause"], e["state"]) for e in await ops.transitions("tank-high", 4)]
            assert causes[:4] == [("raise", "active_unacked"), ("realarm", "active_unacked"),
                                  ("suppress", "suppressed"), ("unsuppress", "active_unacked")]
            assert (await ops.command("ack", "tank-high", "tank-1"))["ok"] is True
            for value in (3, 7, 3, 7):  # clear, raise, clear, raise: more than 3 in 1 h
                await level(value)
            flagged = await watcher.wait(lambda: [e for e in ops.events("tank-high")
                                                  if e["cause"] == "chatter"], what="chatter")
            assert flagged[0]["chatter"] is True
            await watcher.wait(lambda: ops.retained("tank-high", "tank-1").get("chatter"),
                               what="retained chatter flag")
            snap = await asyncio.to_thread(fetch, status_url("127.0.0.1", health_port))
            alarms = snap["alarms"]
            assert alarms["chatter_total"] == 1 and alarms["chattering"] == 1
            assert alarms["transitions"]["suppress"] == 1
            assert alarms["transitions"]["realarm"] >= 1
    finally:
        watcher.close()


async def test_alarm_names_that_are_not_topic_levels(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """Found by probing cmd/alarm as a careless operator: ``out_of_service`` for a device
    named ``meter-/#`` (the rule's glob ``meter-*`` matches it) created an alarm for a device
    that does not exist, whose retained topic ``alarms/r/meter-/#`` paho refuses to publish:
    the ops bus crashed on every restart and the poisoned alarm stayed in the buffer.
    Commands may create alarms only for configured devices; an alarm named by a count key
    (a value from a reading, which may hold ``/``, ``+`` or ``#``) is published under its
    name with those characters percent-encoded."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    sinks = "  - {type: file, name: f}\n"
    devices = "[{id: meter-1, driver: test_gate}]"
    rules = """\
  - id: r
    devices: ["meter-*"]
    when: "v > 10"
  - id: denied
    when: "not granted"
    count: {n: 1, within: 1m, key: reader}
"""
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(base, broker.port, sinks, rules, devices=devices))
    watcher = Watcher(broker.port, "ops", "ops-secret", [f"{base}/alarms/#", f"{base}/cmd/#"])
    ops = Ops(watcher, base)
    try:
        async with running(config) as gateway:
            await watcher.wait(lambda: ops_connected(gateway), what="ops bus")
            for device in ("meter-/#", "meter-+", "meter-9"):
                answer = await ops.command("out_of_service", "r", device)
                assert answer["ok"] is False and "unknown device" in answer["error"]
            assert (await ops.command("out_of_service", "r", "meter-1"))["ok"] is True
            await submit(gateway, "meter-1", "access_event", granted=False,
                         reader="gate/east#1+%")
            raised = (await ops.transitions("denied", 1, "raise by a count key"))[0]
            assert raised["device"] == "gate/east#1+%"
            topic = f"{base}/alarms/denied/gate%2Feast%231%2B%25"
            state = await watcher.wait(lambda: watcher.on(topic), what="encoded topic")
            assert state[-1]["device"] == "gate/east#1+%"
            assert gateway.supervisor is not None
            assert gateway.supervisor.restarts == {}
    finally:
        watcher.close()


async def test_an_alarm_that_never_changed_state_has_no_since(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Found by reading the retained topics after ``iotgw demo``: alarms with a pending
    on-delay (or an offline timer) that never raised were republished at connect with
    ``"since": "1970-01-01T00:00:00+00:00"`` (and ``iotgw alarms`` printed that date):
    ``since`` is null until the alarm's first transition."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    sinks = "  - {type: file, name: f}\n"
    rules = "  - {id: slow, devices: ['meter-*'], when: 'v > 10', for: 1h}\n"
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(base, broker.port, sinks, rules,
                                  devices="[{id: meter-1, driver: test_gate}]"))
    async with running(config) as gateway:
        await submit(gateway, "meter-1", "m", v=11.0)  # pending for an hour: seq 0
        assert gateway.alarms is not None and [a.seq for a in gateway.alarms.alarms()] == [0]
    watcher = Watcher(broker.port, "ops", "ops-secret", [f"{base}/alarms/#"])
    try:
        async with running(config) as gateway:  # restored; every alarm republished
            states = await watcher.wait(lambda: watcher.on(f"{base}/alarms/slow/meter-1"),
                                        what="republished pending alarm")
            assert states[-1]["seq"] == 0 and states[-1]["state"] == "normal"
            assert states[-1]["since"] is None, states[-1]
    finally:
        watcher.close()
    capsys.readouterr()
    assert main(["alarms", str(config)]) == 0
    out = capsys.readouterr().out
    assert "slow/meter-1: normal" in out and "1970" not in out, out


async def test_home_assistant_alarms_named_by_count_keys_do_not_collide(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """Found by probing with unicode names: a count-key alarm is named by a reading's
    value (``key: reader``), and the Home Assistant object id kept only [A-Za-z0-9_-] of
    it, so readers "东门" and "西门" (east and west gate) both became
    ``alarm_denied`` (one entity, the second config overwriting the first, and forgetting
    one removed the other). Such names now carry a short hash of the exact name."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    sinks = "  - {type: file, name: f}\n"
    rules = ("  - {id: denied, when: 'not granted', count: {n: 1, within: 1m, key: reader}}\n")
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(base, broker.port, sinks, rules,
                                  devices="[{id: ctl-1, driver: test_gate}]"))
    watcher = Watcher(broker.port, "ops", "ops-secret", ["homeassistant/binary_sensor/#"])
    try:
        async with running(config) as gateway:
            await watcher.wait(lambda: ops_connected(gateway), what="ops bus")
            for reader in ("东门", "西门"):
                await submit(gateway, "ctl-1", "access_event", granted=False, reader=reader)

            def configs() -> dict[str, dict[str, Any]]:
                found = {}
                for topic in {t for t, _, _ in list(watcher.messages)}:
                    states = watcher.on(topic)
                    if topic.startswith("homeassistant/binary_sensor/") and states:
                        found[states[-1]["state_topic"]] = states[-1]
                return found if len(found) == 2 else {}

            found = await watcher.wait(configs, what="two HA alarm configs")
            assert len({c["unique_id"] for c in found.values()}) == 2, found
    finally:
        watcher.close()


async def until(check: Callable[[], Any], what: str) -> None:
    """Hang guard: poll ``check`` until it holds."""
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_corrupt_saved_alarm_row_does_not_stop_the_gateway(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Found by probing ``iotgw run`` and ``iotgw alarms`` on a damaged buffer: one
    ``alarm_state`` row whose JSON column was unreadable made the gateway exit with a
    traceback at start (no readings either), and ``iotgw alarms`` crashed on a ``since``
    that was not a number. The row is restored from its ``state`` and ``seq`` columns
    (without timers), the damage is logged, and seq still only grows."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    sinks = "  - {type: file, name: f}\n"
    rules = "  - {id: hot, devices: ['meter-*'], when: 'v > 10'}\n"
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(base, broker.port, sinks, rules,
                                  devices="[{id: meter-1, driver: test_gate}]"))
    async with running(config) as gateway:
        assert gateway.alarms is not None
        await submit(gateway, "meter-1", "m", v=11.0)
        await until(lambda: gateway.alarms is not None and gateway.alarms.alarms()
                    and gateway.alarms.alarms()[0].seq == 1, "raised")
        await gateway.alarms.command(AlarmCommand(AlarmAction.ACK, "hot", "meter-1", "op"))
    db = sqlite3.connect(tmp_path / "data" / "buffer.db")
    with db:
        db.execute("UPDATE alarm_state SET data = '{not json', since = 'abc'")
    db.close()

    async with running(config) as gateway:  # starts; the alarm is back in its state
        assert gateway.alarms is not None
        (alarm,) = gateway.alarms.alarms()
        assert (alarm.state, alarm.seq) == (AlarmState.ACTIVE_ACKED, 2)
        await submit(gateway, "meter-1", "m", v=1.0)
        await until(lambda: gateway.alarms is not None
                    and gateway.alarms.alarms()[0].seq == 3, "clear with the next seq")
    capsys.readouterr()
    db = sqlite3.connect(tmp_path / "data" / "buffer.db")
    with db:
        db.execute("UPDATE alarm_state SET since = 'abc'")
    db.close()
    assert main(["alarms", str(config)]) == 0
    assert "hot/meter-1: normal" in capsys.readouterr().out


async def test_a_long_count_key_reaches_the_bus_and_can_be_acknowledged(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """Found by an outside probe: a count rule keyed by a payload value of 70,000
    characters journaled its alarm, but the retained state topic was too long for paho,
    the ValueError came before the ``alarms/events`` publish, and neither went out; and
    any key over ~16 KiB made an alarm whose ``cmd/alarm ack`` the ops bus refuses as too
    large. Such alarms are now named by a bounded form of the value (prefix, ``~``, hash),
    the value itself in the event's ``key_value``."""
    broker = mosquitto_factory(acl=ACL, users=USERS)
    base = "compound/ae/gw"
    sinks = "  - {type: file, name: f}\n"
    rules = "  - {id: bykey, when: 'v > 0', count: {n: 1, within: 1m, key: k}}\n"
    config = tmp_path / "gw.yaml"
    config.write_text(config_text(base, broker.port, sinks, rules,
                                  devices="[{id: kdev, driver: test_gate}]"))
    watcher = Watcher(broker.port, "ops", "ops-secret", [f"{base}/alarms/#", f"{base}/cmd/#"])
    ops = Ops(watcher, base)
    long_key = "x" * 70_000
    try:
        async with running(config) as gateway:
            await watcher.wait(lambda: ops_connected(gateway), what="ops bus")
            await submit(gateway, "kdev", "m", k=long_key, v=1)
            await submit(gateway, "kdev", "m", k="after-long", v=1)
            raised = await ops.transitions("bykey", 2, "both raises")
            name = raised[0]["device"]
            assert len(name) == 129 and name.startswith("x" * 112) and name[112] == "~"
            assert raised[0]["key_value"] == long_key[:1024]
            assert raised[1]["device"] == "after-long" and "key_value" not in raised[1]
            state = await watcher.wait(lambda: ops.retained("bykey", name),
                                       what="the long key's retained state")
            assert state["state"] == "active_unacked"
            answer = await ops.command("ack", "bykey", name)
            assert answer["ok"] is True, answer
            assert answer["result"]["state"] == "active_acked"
            await watcher.wait(lambda: ops.retained("bykey", name).get("acked"),
                               what="the acknowledged state")
    finally:
        watcher.close()
