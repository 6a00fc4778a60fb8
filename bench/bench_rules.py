"""Alarm engine figures: throughput with 1,000 rules, memory per rule, and what the
engine costs the pipeline when no rules are configured.

Run: ``.venv/bin/python bench/bench_rules.py [--rules 1000] [--devices 200] [--seconds 5]``.

1. Engine throughput: ``--rules`` threshold rules spread over ``--devices`` devices
   (``meter-N``; each rule selects one device and reads one of its 4 fields, with a 2 s
   on-delay as in the issue's example), readings of 4 fields fed to ``Engine.process``
   on one core for ``--seconds``. Values cross the thresholds now and then, so timers
   start, fire and alarms raise and clear during the run (transitions are taken and
   dropped: the commit is measured separately, below). Target: 10,000 readings/s.
2. Memory per rule: tracemalloc of the compiled rules plus every (rule, device) alarm
   with its state, divided by the number of rules. Target: 20 KiB.
3. Commit of transitions: the journal + alarm series transaction on a real buffer
   (synchronous=full, as shipped), batches of 1 and of 50 transitions.
4. Pipeline cost: ``Pipeline.submit`` of the same readings (a) with no rules (the
   gateway then adds no listener: the code path of a gateway before this engine), (b)
   with the engine listening and 1,000 rules. Compared in one run, same process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from gateway.alarms import journal
from gateway.alarms.config import RuleConfig
from gateway.alarms.engine import DeviceInfo, Engine
from gateway.alarms.model import Transition
from gateway.alarms.rules import CompiledRule, compile_rule
from gateway.buffer import AsyncBuffer, Buffer
from gateway.pipeline import Pipeline
from gateway.reading import Reading
from gateway.stats import GatewayStats

FIELDS = ("voltage_l1", "voltage_l2", "current_l1", "power_total")


def make_rules(n: int, devices: int) -> list[CompiledRule]:
    rules = []
    for i in range(n):
        field = FIELDS[i % len(FIELDS)]
        rules.append(compile_rule(RuleConfig.model_validate({
            "id": f"rule-{i}", "devices": [f"meter-{i % devices}"],
            "when": f"{field} > {200 + i % 50}", "for": "2s", "deadband": 2,
            "severity": 1 + i % 4, "message": f"{field} is {{{field}}}"})))
    return rules


def make_readings(devices: int, count: int) -> list[tuple[str, Reading]]:
    out = []
    for k in range(count):
        device = f"meter-{k % devices}"
        base = 180.0 + (k // devices) % 90  # sweeps across the thresholds
        fields = {f: base + j for j, f in enumerate(FIELDS)}
        out.append((device, Reading("energy_meter", {"device": device}, fields, k)))
    return out


def engine_throughput(rules: int, devices: int, seconds: float) -> tuple[float, int, int]:
    engine = Engine(make_rules(rules, devices),
                    devices={f"meter-{d}": DeviceInfo() for d in range(devices)})
    readings = make_readings(devices, 200_000)
    engine.start(0.0)
    done = transitions = 0
    now = 0.0
    started = time.process_time()
    while time.process_time() - started < seconds:
        for device, reading in readings[:20_000]:
            now += 0.0005  # 2,000 readings per simulated second
            engine.process(device, (reading,), now)
            done += 1
        engine.advance(now)
        transitions += len(engine.take()[0])
        readings = readings[20_000:] + readings[:20_000]
    elapsed = time.process_time() - started
    return done / elapsed, engine.counters.evaluations, transitions


def memory_per_rule(rules: int, devices: int) -> tuple[float, int]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    compiled = make_rules(rules, devices)
    engine = Engine(compiled, devices={f"meter-{d}": DeviceInfo() for d in range(devices)})
    for device, reading in make_readings(devices, devices * 100):
        engine.process(device, (reading,), reading.time_ns / 1e3)
    engine.advance(1e9)
    engine.take()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return used / rules, len(engine.alarms)


async def commit_latency(path: Path, batch: int, rounds: int) -> list[float]:
    buffer = AsyncBuffer(Buffer(path, max_bytes=64 * 1024**2, when_full="drop_oldest"))
    await buffer.open()
    await buffer.commit_with("schema", [], 0, 0, journal.ensure_schema)
    engine = Engine(make_rules(batch, batch))
    times = []
    now = 0.0
    for r in range(rounds):
        for d in range(batch):
            now += 0.001
            engine.process(f"meter-{d}", (Reading("m", {}, {"voltage_l1": 500.0 if r % 2 == 0
                                                             else 0.0}, 1),), now)
        engine.advance(now + 3)
        transitions, dirty = engine.take()
        rows = journal.state_records(dirty, {})
        lines, oldest, newest = journal.alarm_lines(transitions, {"site": "s"})
        def write(conn: sqlite3.Connection, t: list[Transition] = transitions,
                  w: list[journal.StateRecord] = rows) -> None:
            journal.write(conn, t, w)

        started = time.perf_counter()
        await buffer.commit_with("alarms", lines, oldest, newest, write)
        times.append(time.perf_counter() - started)
    await buffer.close()
    return times


async def pipeline_rate(path: Path, with_engine: Engine | None, readings: list[tuple[str, Reading]]
                        ) -> float:
    buffer = AsyncBuffer(Buffer(path, max_bytes=512 * 1024**2, when_full="drop_oldest",
                                synchronous="normal"))
    await buffer.open()
    pipeline = Pipeline(buffer, GatewayStats(), site="s", gateway_id="gw", flush_interval=1000,
                        max_pending=10_000_000)
    if with_engine is not None:
        engine = with_engine
        clock = iter(range(10**9))
        pipeline.add_listener(lambda device, batch: engine.process(device, batch,
                                                                  next(clock) / 2000))
    started = time.process_time()
    for device, reading in readings:
        await pipeline.submit(device, (reading,))
    elapsed = time.process_time() - started
    await buffer.close()
    return len(readings) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    rate, evaluations, transitions = engine_throughput(args.rules, args.devices, args.seconds)
    print(f"engine: {args.rules} rules over {args.devices} devices: {rate:,.0f} readings/s "
          f"on one core ({evaluations:,} rule evaluations, {transitions:,} transitions; "
          "target 10,000/s)")
    per_rule, alarms = memory_per_rule(args.rules, args.devices)
    print(f"memory: {per_rule / 1024:.1f} KiB per rule including its {alarms:,} alarms' state "
          "(target 20 KiB)")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 50):
            times = asyncio.run(commit_latency(Path(tmp) / f"c{batch}.db", batch, 200))
            times.sort()
            print(f"commit of {batch:>2} transition(s) (journal + state + alarm series, "
                  f"synchronous=full): median {statistics.median(times) * 1e3:.2f} ms, "
                  f"p99 {times[int(len(times) * 0.99) - 1] * 1e3:.2f} ms")
        readings = make_readings(args.devices, 100_000)
        rates: dict[str, list[float]] = {"no rules": [], f"{args.rules} rules": []}
        for attempt in range(3):
            rates["no rules"].append(asyncio.run(pipeline_rate(
                Path(tmp) / f"p{attempt}a.db", None, readings)))
            engine = Engine(make_rules(args.rules, args.devices))
            rates[f"{args.rules} rules"].append(asyncio.run(pipeline_rate(
                Path(tmp) / f"p{attempt}b.db", engine, readings)))
        for name, values in rates.items():
            print(f"pipeline.submit, {name}: {statistics.median(values):,.0f} readings/s "
                  f"(median of 3: {', '.join(f'{v:,.0f}' for v in values)})")


if __name__ == "__main__":
    main()
