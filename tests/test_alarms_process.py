"""The alarm engine in a real gateway process: the ``alarm`` series reaches the file sink,
and randomized ``kill -9`` during raise, clear, ack, shelve and a pending ``for:`` loses
no alarm, journals no transition twice, keeps operator state and fires timers on time.

Inputs and commands come from a small third-party driver installed for the test (the
documented plugin route, as in tests/test_plugins.py): it emits the value the test writes
to ``value.json`` every 50 ms and runs the alarm commands the test drops as
``cmd-N.json`` through ``Gateway.alarms.command`` (renaming each to ``.done`` once the
command's transition is committed).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gwproc import ROOT, GatewayProcess

PROBE = '''
"""Test driver: emits the value in value.json, runs alarm commands from cmd-*.json."""
import asyncio, json, time
from pathlib import Path
from typing import Literal

from gateway.alarms.model import AlarmAction, AlarmCommand, AlarmCommandRefused
from gateway.driver import DeviceConfigBase, DeviceState, Driver
from gateway.reading import Reading
from gateway.registry import register_driver


class ProbeConfig(DeviceConfigBase):
    driver: Literal["alarmprobe"]
    control: str


class ProbeDriver(Driver):
    async def run(self) -> None:
        control = Path(self.config.control)
        self.ctx.set_state(DeviceState.ONLINE)
        while True:
            try:
                spec = json.loads((control / "value.json").read_text())
            except (OSError, ValueError):
                spec = {}
            fields = spec.get("fields") or ({"v": float(spec["v"])} if "v" in spec else None)
            if fields:
                await self.ctx.emit([Reading("probe", {}, fields, time.time_ns())])
            for path in sorted(control.glob("cmd-*.json")):
                spec = json.loads(path.read_text())
                service = self.ctx.gateway.alarms
                try:
                    snapshot = await service.command(AlarmCommand(
                        AlarmAction(spec["action"]), spec["rule"], spec["device"], "test",
                        spec.get("for")))
                    result = {"state": snapshot.state.value, "seq": snapshot.seq}
                except AlarmCommandRefused as exc:
                    result = {"refused": str(exc)}
                # the test waits for .done: it must appear complete (written, then renamed)
                path.with_suffix(".part").write_text(json.dumps(result))
                path.unlink()
                path.with_suffix(".part").replace(path.with_suffix(".done"))
            await asyncio.sleep(0.05)


register_driver(ProbeConfig, ProbeDriver)
'''


def install_probe(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "alarmprobe").mkdir(parents=True)
    (site / "alarmprobe" / "__init__.py").write_text(textwrap.dedent(PROBE))
    dist = site / "alarmprobe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: alarmprobe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[iotgw.drivers]\nalarmprobe = alarmprobe\n")
    return {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}


RULES = """\
rules:
  - id: hi
    devices: [probe-1]
    when: "v > 10"
    clear: "v < 5"
    severity: 1
    message: "v is {v}"
  - id: slow
    devices: [probe-1]
    when: "v > 10"
    for: 3s
"""


def write_config(tmp_path: Path) -> Path:
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw, site: s, data_dir: data}\n"
        "buffer: {flush_interval: 50ms}\n"
        "health: {enabled: false}\n"
        "devices:\n"
        f"  - {{id: probe-1, driver: alarmprobe, control: {control}, tags: {{building: b7}}}}\n"
        + RULES)
    return config


def set_value(tmp_path: Path, value: float) -> None:
    tmp = tmp_path / "control" / "value.tmp"
    tmp.write_text(json.dumps({"v": value}))
    tmp.replace(tmp_path / "control" / "value.json")


def send(tmp_path: Path, n: int, action: str, rule: str = "hi",
         duration: float | None = None) -> Path:
    spec: dict[str, Any] = {"action": action, "rule": rule, "device": "probe-1"}
    if duration is not None:
        spec["for"] = duration
    tmp = tmp_path / "control" / f"cmd-{n}.tmp"
    tmp.write_text(json.dumps(spec))
    tmp.replace(tmp_path / "control" / f"cmd-{n}.json")
    return tmp_path / "control" / f"cmd-{n}.done"


def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "buffer.db"


def read_db(tmp_path: Path) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]]]:
    """Saved alarm states by rule and the journal, read as a second process would."""
    conn = sqlite3.connect(f"{db(tmp_path).as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        if "alarm_state" not in tables:
            return {}, []
        states = {r[0]: {"state": r[1], "seq": r[2], **json.loads(r[3])} for r in conn.execute(
            "SELECT rule, state, seq, data FROM alarm_state")}
        journal = conn.execute("SELECT alarm_id, seq, rule, cause, state, at FROM alarm_journal "
                               "ORDER BY id").fetchall()
        return states, journal
    finally:
        conn.close()


def wait_until(predicate: Any, timeout: float = 30.0) -> float:
    """Hang guard; returns the time.time() at which the predicate first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(0.02)
    raise AssertionError("condition never held")


def started(gw: GatewayProcess) -> float:
    gw.wait_for_log(lambda r: "alarms restored" in str(r.get("msg", "")))
    return time.time()


def test_alarm_series_reaches_the_file_sink_with_installer_tags(tmp_path: Path) -> None:
    env = install_probe(tmp_path)
    config = write_config(tmp_path)
    set_value(tmp_path, 1.0)
    gw = GatewayProcess(config, env=env).start()
    try:
        started(gw)
        set_value(tmp_path, 20.0)
        lines = tmp_path / "data" / "lines" / "current.lp"
        wait_until(lambda: lines.exists() and b"rule=slow" in lines.read_bytes())
        done = send(tmp_path, 1, "ack")
        wait_until(done.exists)
        set_value(tmp_path, 0.0)
        wait_until(lambda: b'state="normal"' in lines.read_bytes())
    finally:
        assert gw.stop() == 0
    alarm_lines = [line for line in lines.read_text().splitlines() if line.startswith("alarm,")]
    hi = [line for line in alarm_lines if "rule=hi" in line]
    assert hi[0].startswith("alarm,building=b7,device=probe-1,gateway=gw,rule=hi,severity=1,"
                            "site=s acked=0i,active=1i,seq=1i,state=\"active_unacked\" ")
    assert 'acked=1i,active=1i,seq=2i,state="active_acked"' in hi[1]
    assert 'acked=1i,active=0i,seq=3i,state="normal"' in hi[2]
    states, journal = read_db(tmp_path)
    assert [(r[2], r[3]) for r in journal if r[2] == "hi"] == [
        ("hi", "raise"), ("hi", "ack"), ("hi", "clear")]
    assert states["slow"]["state"] == "cleared_unacked"


ACTIONS = ("raise", "clear", "ack", "shelve", "pending_for")


def kill_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    env = install_probe(tmp_path)
    config = write_config(tmp_path)
    value = 0.0
    set_value(tmp_path, value)
    command = 0
    timers_checked = 0
    gw = GatewayProcess(config, env=env).start()
    ready = started(gw)
    try:
        for number in range(rounds):
            action = rng.choice(ACTIONS)
            delay = rng.uniform(0.0, 0.6)
            expect_kept: dict[str, Any] = {}
            if action == "pending_for":
                # from a cleared condition, kill while slow's for: runs (0.5..2.5 s of 3 s)
                set_value(tmp_path, 0.0)
                wait_until(lambda: read_db(tmp_path)[0].get("slow", {}).get("state") in (
                    None, "normal", "cleared_unacked", "shelved"))
                value = 20.0
                set_value(tmp_path, value)
                delay = rng.uniform(0.5, 2.5)
            elif action == "raise":
                value = 20.0
                set_value(tmp_path, value)
            elif action == "clear":
                value = 0.0
                set_value(tmp_path, value)
            else:
                command += 1
                done = send(tmp_path, command, action, duration=3600.0 if action == "shelve"
                            else None)
                wait_until(done.exists)
                result = json.loads(done.read_text())
                if "state" in result:
                    expect_kept = {"hi": result["state"]}
            time.sleep(delay)
            gw.signal(signal.SIGKILL)
            gw.kill()
            states, journal = read_db(tmp_path)
            # the command returned only after its transition was committed: it survived
            for rule, state in expect_kept.items():
                assert states[rule]["state"] == state, (number, action, states)
            gw = GatewayProcess(config, env=env).start()
            ready = started(gw)
            restored = gw.wait_for_log(lambda r: "alarms restored" in str(r.get("msg", "")))
            active = sum(1 for s in states.values() if s["state"].startswith("active"))
            assert f"({active} active)" in str(restored.get("msg")), (restored, states)
            slow = states.get("slow", {})
            if slow.get("pending_on") is not None and value > 10:
                began: float = slow["pending_on"]
                due = began + 3.0
                fired = wait_until(lambda began=began: any(
                    r[2] == "slow" and r[3] == "raise" and r[5] >= began
                    for r in read_db(tmp_path)[1]))
                # fires at its due time, or at once if it fell due while we were down
                assert fired - max(due, ready) < 1.0 + 0.3, (number, fired, due, ready)
                timers_checked += 1
        time.sleep(0.5)
    finally:
        gw.kill()
    if rounds >= 10:
        assert timers_checked >= 1, "no round killed a pending for: (change the seed)"
    states, journal = read_db(tmp_path)
    by_alarm: dict[str, list[int]] = {}
    for alarm_id, seq, *_ in journal:
        by_alarm.setdefault(alarm_id, []).append(seq)
    for seqs in by_alarm.values():
        # no duplicate (alarm_id, seq) and none missing: each transition exactly once
        assert seqs == list(range(1, len(seqs) + 1)), seqs
    for rule, row in states.items():
        assert row["seq"] == len(by_alarm[next(r[0] for r in journal if r[2] == rule)])
    # a condition that held through a restart was never raised twice in a row
    for rule in ("hi", "slow"):
        causes = [r[3] for r in journal if r[2] == rule and r[3] in ("raise", "clear")]
        assert all(a != b for a, b in itertools.pairwise(causes)), (rule, causes)


def test_kill_9_rounds_fixed_seed(tmp_path: Path) -> None:
    kill_rounds(tmp_path, rounds=10, seed=1212)


@pytest.mark.soak
def test_kill_9_rounds_soak(tmp_path: Path) -> None:
    kill_rounds(tmp_path, rounds=100, seed=2026)


def test_sighup_reload_keeps_the_pending_on_delay_of_an_unchanged_rule(tmp_path: Path) -> None:
    env = install_probe(tmp_path)
    config = write_config(tmp_path)
    set_value(tmp_path, 1.0)
    gw = GatewayProcess(config, env=env).start()
    try:
        started(gw)
        set_value(tmp_path, 20.0)
        wait_until(lambda: read_db(tmp_path)[0].get("slow", {}).get("pending_on") is not None)
        began = read_db(tmp_path)[0]["slow"]["pending_on"]
        # another rule is added and hi's threshold changes; slow is untouched
        config.write_text(config.read_text().replace('"v > 10"\n    clear', '"v > 12"\n    clear')
                          + "  - id: extra\n    devices: [probe-1]\n    when: \"v > 100\"\n")
        time.sleep(max(0.0, began + 1.5 - time.time()))  # a reset would end 1.5 s later
        gw.signal(signal.SIGHUP)
        gw.wait_for_log(lambda r: "config reloaded" in str(r.get("msg", "")))
        fired = wait_until(lambda: any(r[2] == "slow" and r[3] == "raise"
                                       for r in read_db(tmp_path)[1]))
    finally:
        assert gw.stop() == 0
    assert fired - (began + 3.0) < 1.3  # not restarted by the reload (that would be +3 s)
    _states, journal = read_db(tmp_path)
    slow = [r for r in journal if r[2] == "slow"]
    assert slow[0][5] == pytest.approx(began + 3.0)
    assert [r[3] for r in journal if r[2] == "hi"] == ["raise"]  # changed: state kept


def test_blocklisted_plate_matches_without_the_raw_plate_reaching_the_buffer(
        tmp_path: Path) -> None:
    env = install_probe(tmp_path)
    control = tmp_path / "control"
    control.mkdir()
    (tmp_path / "key").write_text("k" * 32)
    (tmp_path / "blocked.txt").write_text("# stolen\nZZ999\nAB123\n")
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw, site: s, data_dir: data}\n"
        "buffer: {flush_interval: 50ms}\n"
        "health: {enabled: false}\n"
        f"privacy: {{key_file: {tmp_path / 'key'}}}\n"
        "devices:\n"
        f"  - {{id: barrier-1, driver: alarmprobe, control: {control}, "
        "pseudonymize: [plate]}\n"
        "rules:\n"
        "  - id: blocked-plate\n"
        "    devices: [barrier-*]\n"
        "    when: plate in blocked\n"
        "    message: 'blocked plate {plate}'\n"
        "    lists: {blocked: {file: blocked.txt, field: plate}}\n")
    tmp = control / "value.tmp"
    tmp.write_text(json.dumps({"fields": {"plate": "CD456"}}))
    tmp.replace(control / "value.json")
    gw = GatewayProcess(config, env=env).start()
    try:
        started(gw)
        time.sleep(0.3)
        tmp.write_text(json.dumps({"fields": {"plate": "AB123"}}))
        tmp.replace(control / "value.json")
        lines = tmp_path / "data" / "lines" / "current.lp"
        wait_until(lambda: lines.exists() and b"rule=blocked-plate" in lines.read_bytes())
    finally:
        assert gw.stop() == 0
    _states, journal = read_db(tmp_path)
    assert [r[3] for r in journal] == ["raise"]
    for stored in (lines, db(tmp_path)):
        assert b"AB123" not in stored.read_bytes(), stored
    from gateway.pseudonym import Pseudonymizer

    token = Pseudonymizer(b"k" * 32)("AB123")
    assert f"plate=\"{token}\"".encode() in lines.read_bytes()


def test_rules_added_by_reload_start_the_engine_and_removed_rules_clear(tmp_path: Path) -> None:
    env = install_probe(tmp_path)
    config = write_config(tmp_path)
    with_rules = config.read_text()
    config.write_text(with_rules.split("rules:")[0])
    set_value(tmp_path, 20.0)
    gw = GatewayProcess(config, env=env).start()
    try:
        gw.wait_for_log(lambda r: "running" in str(r.get("msg", "")))
        assert not any("alarms restored" in m for m in gw.messages())  # no engine at all
        config.write_text(with_rules)
        gw.signal(signal.SIGHUP)
        started(gw)
        wait_until(lambda: any(r[2] == "slow" for r in read_db(tmp_path)[1]))
        config.write_text(with_rules.split("  - id: slow")[0])  # slow removed
        gw.signal(signal.SIGHUP)
        wait_until(lambda: any(r[2] == "slow" and r[3] == "removed"
                               for r in read_db(tmp_path)[1]))
    finally:
        assert gw.stop() == 0
    states, journal = read_db(tmp_path)
    assert states["slow"]["state"] == "normal"
    assert [r[3] for r in journal if r[2] == "slow"] == ["raise", "removed"]
