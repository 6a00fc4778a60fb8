"""Alarm latency: a reading entering the pipeline -> its alarm transition on MQTT.

Run: ``.venv/bin/python bench/bench_alarm_latency.py [--rules 1000] [--devices 200]
[--rate 2000] [--seconds 20] [--transitions 100]``.

Target (issue 12): 1,000 rules over 200 devices at 2,000 readings/s, p99 from a reading
entering the pipeline to the alarm transition published on MQTT at most 50 ms (rules
without delays).

Starts a private mosquitto (``tests.support.servers.Mosquitto``) on a free loopback port and an
in-process gateway (``gateway.runtime.Gateway``, the real alarm engine and ops bus; a file
sink; buffer ``synchronous=full``, the default, so every transition's journal commit is
fsync'd before it is published). Rule ``r`` watches device ``dev-(r mod devices)`` and
field ``f(r div devices)``: ``when: "fK > 50"``, ``clear: "fK < 50"``, no ``for``.

A feeder task in the gateway's event loop submits ``--rate`` readings/s through
``Gateway.submit`` (what a driver calls), one reading per device in turn, each with every
field the device's rules watch. Most values do not cross a threshold; ``--transitions``
per second do, each with a value that encodes the reading's number (raise: ``100 +
n*1e-6``, clear: ``n*1e-6``). The feeder notes ``time.monotonic_ns()`` just before the
``submit``. A subscriber in a separate process (paho, MQTT 5) notes
``time.monotonic_ns()`` when each ``alarms/events`` transition arrives (CLOCK_MONOTONIC is
one clock for the whole host) and decodes the number from the transition's ``value``.
Latency = arrival - submit, per transition; the first ``--warmup`` seconds are left out.

Everything shares the host's CPUs (this machine: 2, shared with other work); nothing is
pinned, so the figure includes the broker and the subscriber competing with the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.config.loader import load_config  # noqa: E402
from gateway.reading import Reading  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from tests.support.servers import Mosquitto  # noqa: E402

BASE = "bench/alarmgw"
THRESHOLD = 50.0
NORMAL, ACTIVE = 10.0, 100.0
SCALE = 1e-6


def encode(n: int, raise_: bool) -> float:
    return (ACTIVE if raise_ else 0.0) + n * SCALE


def decode(value: float) -> int:
    return round(((value - ACTIVE) if value >= ACTIVE else value) / SCALE)


def write_config(path: Path, port: int, rules: int, devices: int,
                 synchronous: str = "full") -> None:
    lines = [
        "gateway: {id: bench-alarm, site: bench, data_dir: data}",
        f"buffer: {{flush_interval: 50ms, synchronous: {synchronous}}}",
        "sinks: [{type: file, name: f}]",
        f"mqtt: {{host: 127.0.0.1, port: {port}, username: gw, password: gw-secret, "
        f"base_topic: {BASE}, client_id: bench-alarm}}",
        "devices: []",
        "rules:",
    ]
    for r in range(rules):
        device, field = r % devices, r // devices
        lines.append(f"  - {{id: r{r:05d}, devices: [dev-{device:04d}], "
                     f"when: 'f{field} > {THRESHOLD:g}', clear: 'f{field} < {THRESHOLD:g}', "
                     "severity: 3}")
    path.write_text("\n".join(lines) + "\n")


def subscriber(port: int, out: Any, ready: Any, stop: Any) -> None:
    """In its own process: (arrival monotonic ns, cause, value) of every transition."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[tuple[int, str, Any]] = []

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        at = time.monotonic_ns()
        body = json.loads(message.payload)
        if body.get("type") == "transition":
            got.append((at, body["cause"], body["value"]))

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.username_pw_set("gw", "gw-secret")
    client.on_message = on_message
    client.on_subscribe = lambda *a: ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe(f"{BASE}/alarms/events", 1)
    client.loop_start()
    stop.wait()
    time.sleep(0.5)
    client.loop_stop()
    out.put(got)


async def feed(gateway: Gateway, *, devices: int, fields: int, rate: float, seconds: float,
               transitions: float, seed: int) -> dict[int, tuple[int, bool]]:
    """Submit ``rate`` readings/s for ``seconds``; returns n -> (submit ns, raise?)."""
    rng = random.Random(seed)
    state = {(d, k): False for d in range(devices) for k in range(fields)}
    sent: dict[int, tuple[int, bool]] = {}
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    p_cross = transitions / rate
    n = 0
    device = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    next_tick = start
    while loop.time() < end:
        for _ in range(per_tick):
            values = {f"f{k}": ACTIVE if state[device, k] else NORMAL for k in range(fields)}
            crossing = None
            if rng.random() < p_cross:
                k = rng.randrange(fields)
                n += 1
                state[device, k] = not state[device, k]
                crossing = (n, state[device, k])
                values[f"f{k}"] = encode(n, state[device, k])
            reading = Reading("bench", {}, values, time.time_ns())
            if crossing is not None:
                sent[crossing[0]] = (time.monotonic_ns(), crossing[1])
            await gateway.submit(f"dev-{device:04d}", [reading])
            device = (device + 1) % devices
        next_tick += tick
        delay = next_tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent


def time_journal_commits(gateway: Gateway) -> dict[str, list[float]]:
    """Diagnostics: for each alarm journal commit, the time spent in SQLite on the buffer's
    worker thread (``run``) and the whole await (``await``: queueing behind the pipeline's
    own commits and the forwarder's reads, plus the thread hand-offs)."""
    out: dict[str, list[float]] = {"run": [], "await": []}
    worker = gateway.buffer.buffer
    sync_commit = worker.commit_with
    async_commit = gateway.buffer.commit_with

    def timed_sync(doing: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return sync_commit(doing, *args, **kwargs)
        finally:
            if doing == "alarm journal":
                out["run"].append((time.perf_counter() - start) * 1000)

    async def timed_async(doing: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await async_commit(doing, *args, **kwargs)
        finally:
            if doing == "alarm journal":
                out["await"].append((time.perf_counter() - start) * 1000)

    worker.commit_with = timed_sync  # type: ignore[method-assign]
    gateway.buffer.commit_with = timed_async  # type: ignore[method-assign]
    return out


def report_commits(commits: dict[str, list[float]]) -> None:
    run, waited = commits["run"], commits["await"]
    if run and waited:
        print(f"  alarm journal commits: {len(run):,}; in SQLite p50 {pct(run, 50):.1f} ms, "
              f"p99 {pct(run, 99):.1f} ms; awaited (queue + hand-offs) p50 "
              f"{pct(waited, 50):.1f} ms, p99 {pct(waited, 99):.1f} ms")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-alarm-"))
    broker = Mosquitto(base / "mosquitto", users={"gw": "gw-secret"}, tls=False,
                       max_queued_messages=1_000_000,
                       extra_config="max_inflight_messages 10000\n").start()
    ctx = mp.get_context("spawn")
    out, ready, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    sub = ctx.Process(target=subscriber, args=(broker.port, out, ready, stop))
    sub.start()
    config = base / "gw.yaml"
    write_config(config, broker.port, args.rules, args.devices, args.synchronous)
    fields = -(-args.rules // args.devices)
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    try:
        async with asyncio.timeout(30):
            while not (ready.is_set() and _ops_connected(gateway)):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        alarms = getattr(gateway, "alarms", None)
        assert alarms is not None, "the gateway runs no alarm engine"
        announced: dict[int, int] = {}

        def on_transition(transition: Any) -> None:  # after the journal commit
            value = transition.alarm.value
            if isinstance(value, float):
                announced[decode(value)] = time.monotonic_ns()

        alarms.add_transition_listener(on_transition)
        commits = time_journal_commits(gateway)
        print(f"{args.rules} rules over {args.devices} devices ({fields} fields each), "
              f"{args.rate:g} readings/s for {args.seconds:g} s, about "
              f"{args.transitions:g} threshold crossings/s")
        started = time.monotonic_ns()
        sent = await feed(gateway, devices=args.devices, fields=fields, rate=args.rate,
                          seconds=args.seconds, transitions=args.transitions, seed=args.seed)
        fed = (time.monotonic_ns() - started) / 1e9
        in_count = gateway.stats.readings_in
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        gateway.request_stop()
        await asyncio.wait_for(runner, 30)
    got = out.get(timeout=30)
    sub.join(10)
    broker.stop()
    warm = started + int(args.warmup * 1e9)
    latencies: list[float] = []
    committed: list[float] = []
    hop: list[float] = []
    wrong = 0
    arrived: set[int] = set()
    for at, cause, value in got:
        if not isinstance(value, int | float):
            wrong += 1
            continue
        n = decode(float(value))
        entry = sent.get(n)
        if entry is None or cause != ("raise" if entry[1] else "clear"):
            wrong += 1
            continue
        arrived.add(n)
        if entry[0] >= warm:
            latencies.append((at - entry[0]) / 1e6)
            if n in announced:
                committed.append((announced[n] - entry[0]) / 1e6)
                hop.append((at - announced[n]) / 1e6)
    print(f"readings submitted: {in_count:,} in {fed:.1f} s ({in_count / fed:,.0f}/s); "
          f"crossings: {len(sent):,}; transitions received: {len(got):,} "
          f"({len(arrived):,} matched, {wrong} unmatched, {len(sent) - len(arrived)} missing)")
    if not latencies:
        print("no latencies measured")
        return 1
    p99 = pct(latencies, 99)
    print(f"latency submit -> transition on MQTT over {len(latencies):,} transitions "
          f"(after {args.warmup:g} s warm-up): p50 {pct(latencies, 50):.1f} ms, "
          f"p95 {pct(latencies, 95):.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms")
    report_commits(commits)
    if committed:
        print(f"  of which submit -> committed and handed to the outputs: p50 "
              f"{pct(committed, 50):.1f} ms, p99 {pct(committed, 99):.1f} ms; then to the "
              f"subscriber: p50 {pct(hop, 50):.1f} ms, p99 {pct(hop, 99):.1f} ms")
    verdict = "met" if p99 <= 50 else "NOT met"
    print(f"target p99 <= 50 ms: {verdict}")
    return 0 if p99 <= 50 and len(arrived) == len(sent) else 1


def _ops_connected(gateway: Gateway) -> bool:
    runner = gateway.service_runners.get("ops-bus")
    ops = getattr(runner, "__self__", None)
    return ops is not None and bool(ops.connection.connected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=2000.0, help="readings/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transitions", type=float, default=100.0,
                        help="threshold crossings per second (each one transition)")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--synchronous", choices=("full", "normal"), default="full",
                        help="buffer.synchronous (full, the default, fsyncs every commit)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not 1,000 "matches no device" warnings
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
