"""The engine inside the gateway: commit first, then tell the listeners, in order."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.alarms.config import RuleConfig
from gateway.alarms.engine import DeviceInfo, Engine
from gateway.alarms.model import AlarmAction, AlarmCommand, AlarmCommandRefused, Transition
from gateway.alarms.rules import compile_rule
from gateway.alarms.service import AlarmRuntime
from gateway.buffer import AsyncBuffer, Buffer
from gateway.reading import Reading


def journal_rows(path: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT cause, seq FROM alarm_journal ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_listeners_hear_of_a_transition_only_after_it_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = AsyncBuffer(Buffer(path, max_bytes=8 * 1024**2, when_full="drop_oldest"))
    await buffer.open()
    rule = compile_rule(RuleConfig.model_validate({"id": "r", "when": "v > 10"}))
    engine = Engine([rule], devices={"d": DeviceInfo(tags={"building": "b1"})})
    committed_calls: list[int] = []
    runtime = AlarmRuntime(engine, buffer, {"site": "s", "gateway": "gw"},
                           on_committed=lambda: committed_calls.append(1))
    seen: list[tuple[str, int, list[tuple[str, int]]]] = []

    def listener(t: Transition) -> None:
        seen.append((t.cause, t.alarm.seq, journal_rows(path)))

    def broken(t: Transition) -> None:
        raise RuntimeError("an output failed")

    runtime.add_transition_listener(broken)
    runtime.add_transition_listener(listener)
    await runtime.open()
    task = asyncio.create_task(runtime.run())
    try:
        runtime.on_readings("d", [Reading("m", {}, {"v": 11}, 1)])
        snapshot = await runtime.command(AlarmCommand(AlarmAction.ACK, "r", "d", "op"))
        assert snapshot.state.value == "active_acked"
        with pytest.raises(AlarmCommandRefused):
            await runtime.command(AlarmCommand(AlarmAction.ACK, "r", "d", "op"))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runtime.close()
        await buffer.close()
    assert [(c, s) for c, s, _ in seen] == [("raise", 1), ("ack", 2)]
    for cause, seq, rows in seen:
        assert (cause, seq) in rows  # already in the journal when the listener ran
    assert committed_calls  # the forwarders were woken for the alarm lines
    assert [a.state.value for a in runtime.alarms()] == ["active_acked"]
    assert runtime.counters.transitions == {"raise": 1, "ack": 1}
    assert runtime.raises_within(60) == 1 and not runtime.flooding()
    config = runtime.rule_config("r")
    assert config is not None and config.when == "v > 10"


async def test_window_and_pending_state_come_back_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rules = [compile_rule(RuleConfig.model_validate(r)) for r in (
        {"id": "leak", "window": {"field": "flow", "over": "1h"}, "when": "full and min > 0"},
        {"id": "slow", "when": "flow > 0", "for": "30m"})]
    clock = [1000.0]

    async def run_once(feed: list[float]) -> AlarmRuntime:
        buffer = AsyncBuffer(Buffer(path, max_bytes=8 * 1024**2, when_full="drop_oldest"))
        await buffer.open()
        runtime = AlarmRuntime(Engine(rules), buffer, {}, clock=lambda: clock[0])
        await runtime.open()
        for flow in feed:
            clock[0] += 60
            runtime.on_readings("meter", [Reading("water", {}, {"flow": flow}, 1)])
            runtime.engine.advance(clock[0])
            await runtime.flush()
        await runtime.close()
        await buffer.close()
        return runtime

    first = await run_once([0.5] * 20)  # 20 minutes of flow
    assert not first.engine.alarms[("leak", "meter")].active
    second = await run_once([0.4] * 45)  # 45 more: the window (1 h) and the for: (30 m) fill
    leak = second.engine.alarms[("leak", "meter")]
    slow = second.engine.alarms[("slow", "meter")]
    assert leak.active and slow.active
    assert slow.since == pytest.approx(1000.0 + 60 + 1800)  # counted from the first run
    assert [c for c, _ in journal_rows(path)] == ["raise", "raise"]


async def test_an_alarm_removed_at_start_up_keeps_its_severity(tmp_path: Path) -> None:
    """Found by the outside probe of session 7: an alarm whose rule left the config while
    the gateway was stopped got severity 4 in its ``removed`` transition (journal,
    listeners, the ``alarm`` line), where a reload's removal kept the severity it had."""
    from gateway.alarms.replay import read_buffer

    path = tmp_path / "buffer.db"
    high = {"id": "high", "when": "level > 80", "severity": 2}
    other = {"id": "other", "when": "level > 1000", "severity": 3}

    async def run_once(rules: list[dict[str, object]], feed: list[float]) -> list[Transition]:
        buffer = AsyncBuffer(Buffer(path, max_bytes=8 * 1024**2, when_full="drop_oldest"))
        await buffer.open()
        engine = Engine([compile_rule(RuleConfig.model_validate(r)) for r in rules])
        runtime = AlarmRuntime(engine, buffer, {"site": "s", "gateway": "gw"})
        heard: list[Transition] = []
        runtime.add_transition_listener(heard.append)
        await runtime.open()
        for level in feed:
            runtime.on_readings("t1", [Reading("tank", {}, {"level": level}, 1)])
        await runtime.flush()
        await runtime.close()
        await buffer.close()
        return heard

    assert [(t.cause, t.alarm.severity) for t in await run_once([high, other], [90.0])] == [
        ("raise", 2)]
    assert [(t.cause, t.alarm.severity) for t in await run_once([other], [])] == [
        ("removed", 2)]
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT cause, severity FROM alarm_journal ORDER BY id"
                            ).fetchall() == [("raise", 2), ("removed", 2)]
        assert conn.execute("SELECT severity FROM alarm_state").fetchall() == [(2,)]
    finally:
        conn.close()
    lines = [line for _, line in read_buffer(path) if line.startswith("alarm,")]
    assert len(lines) == 2 and all(",severity=2," in line for line in lines), lines


async def test_journal_entries_past_journal_keep_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = AsyncBuffer(Buffer(path, max_bytes=8 * 1024**2, when_full="drop_oldest"))
    await buffer.open()
    rule = compile_rule(RuleConfig.model_validate({"id": "r", "when": "v > 10"}))
    clock = [1000.0]
    runtime = AlarmRuntime(Engine([rule]), buffer, {}, clock=lambda: clock[0])
    await runtime.open()
    for value in (11, 0, 11):
        clock[0] += 60
        runtime.on_readings("d", [Reading("m", {}, {"v": value}, 1)])
        await runtime.flush()
    assert [c for c, _ in journal_rows(path)] == ["raise", "clear", "raise"]
    clock[0] += 91 * 86400  # past the default journal_keep (90 days), after an hour
    runtime.on_readings("d", [Reading("m", {}, {"v": 0}, 1)])
    await runtime.flush()
    await runtime.close()
    await buffer.close()
    assert journal_rows(path) == [("clear", 4)]


async def test_a_flush_cancelled_mid_commit_is_accounted_and_not_written_twice(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "buffer.db"
    buffer = AsyncBuffer(Buffer(path, max_bytes=8 * 1024**2, when_full="drop_oldest"))
    await buffer.open()
    rule = compile_rule(RuleConfig.model_validate({"id": "r", "when": "v > 10"}))
    runtime = AlarmRuntime(Engine([rule]), buffer, {})
    heard: list[str] = []
    runtime.add_transition_listener(lambda t: heard.append(t.cause))
    await runtime.open()
    runtime.on_readings("d", [Reading("m", {}, {"v": 11}, 1)])
    flush = asyncio.create_task(runtime.flush())
    await asyncio.sleep(0)  # the commit is under way on the buffer's thread
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    await runtime.close()  # the shutdown's final flush
    await buffer.close()
    assert journal_rows(path) == [("raise", 1)]
    assert heard == ["raise"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_outputs_subscribed_before_the_first_rules_hear_of_the_engine(
        tmp_path: Path) -> None:
    from gateway.config.loader import load_config
    from gateway.runtime import Gateway

    config = tmp_path / "gw.yaml"
    base = ("gateway: {id: gw, site: s, data_dir: data}\nhealth: {enabled: false}\n"
            "devices: [{id: d1, driver: synthetic, interval: 0.1s, fields: 1}]\n")
    config.write_text(base)
    gateway = Gateway(load_config(config))
    found: list[object] = []
    gateway.on_alarms(found.append)
    started = asyncio.Event()
    gateway.add_state_listener(lambda device_id, status: started.set())
    task = asyncio.create_task(gateway.run())
    try:
        await started.wait()  # (devices start after the pipeline and supervisor exist)
        assert gateway.alarms is None and found == []
        config.write_text(base + "rules: [{id: r, when: 'f0 > 1e9'}]\n")
        assert await gateway.reload()
        assert found == [gateway.alarms] and gateway.alarms is not None
        later: list[object] = []
        gateway.on_alarms(later.append)  # once it runs: called at once
        assert later == [gateway.alarms]
    finally:
        gateway.request_stop()
        await task


@pytest.mark.parametrize("removed", ["rule", "device", "rule at a restart"])
async def test_an_alarm_removed_by_reload_and_added_back_continues_its_seq(
        tmp_path: Path, removed: str, caplog: pytest.LogCaptureFixture) -> None:
    """(alarm_id, seq) names one transition: an alarm made again by a reload starts after
    the seq its journal already holds (it started at 1 again, the journal refused the
    commit with UNIQUE (alarm_id, seq) and the alarms task stopped publishing). The same
    when the rule went at a restart and comes back by reload; a removed device keeps its
    alarm (the rule still selects it), which goes on as it was."""
    from gateway.config.loader import load_config
    from gateway.runtime import Gateway
    from tests.support.wait import eventually

    config = tmp_path / "gw.yaml"
    head = "gateway: {id: gw, site: s, data_dir: data}\nhealth: {enabled: false}\n"
    device = "devices: [{id: d1, driver: synthetic, interval: 0.05s, fields: 1}]\n"
    rule = "rules: [{id: hi, devices: [d1], when: 'f0 > -1e9', clear: 'f0 < -2e9'}]\n"
    other = "rules: [{id: other, when: 'f0 > 1e9'}]\n"  # (without rules: no restore)
    without = {"rule": head + device, "device": head + "devices: []\n" + rule,
               "rule at a restart": head + device + other}[removed]
    db = tmp_path / "data" / "buffer.db"

    def journal() -> list[tuple[str, int]]:
        try:  # the buffer file exists a moment before the alarms task makes its tables
            return journal_rows(db) if db.exists() else []
        except sqlite3.OperationalError:
            return []

    def failed() -> bool:
        return any("task alarms failed" in r.getMessage() for r in caplog.records)

    config.write_text(head + device + rule)
    gateway = Gateway(load_config(config))
    task = asyncio.create_task(gateway.run())
    try:
        await eventually(journal, until=lambda rows: ("raise", 1) in rows)
        config.write_text(without)
        if removed == "rule at a restart":
            gateway.request_stop()
            await task
            gateway = Gateway(load_config(config))
            task = asyncio.create_task(gateway.run())
        else:
            assert await gateway.reload()
        if removed != "device":
            await eventually(journal, until=lambda rows: ("removed", 2) in rows)
        config.write_text(head + device + rule)
        assert await gateway.reload()
        # a removed rule: raised again (3); a removed device: its alarm kept, raised (1)
        made = 1 if removed == "device" else 3
        await eventually(journal, until=lambda rows: len(rows) >= made or failed())
        assert not failed()
        runtime = gateway.alarms
        assert runtime is not None
        snapshot = await runtime.command(AlarmCommand(AlarmAction.ACK, "hi", "d1", "op"))
        assert snapshot.seq == made + 1
    finally:
        gateway.request_stop()
        await task
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    rows = journal()
    assert [seq for _, seq in rows] == list(range(1, made + 2)), rows
    assert rows[-1] == ("ack", made + 1)
