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
