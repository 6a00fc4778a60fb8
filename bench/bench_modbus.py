"""Modbus driver figures: requests per poll cycle per shipped profile, and the CPU the
gateway side spends per request on the footprint workload.

    .venv/bin/python bench/bench_modbus.py [--devices 100] [--points five] [--interval 1]
        [--seconds 20] [--repeat 3]

Workload (docs/modbus.md, issue 11): ``--devices`` SDM630 meters on one Modbus TCP
endpoint, each with the five float32 points voltage_l1, current_l1, power_total,
frequency, energy_import (``--points all``: the whole profile), polled every
``--interval`` seconds with default settings. The simulator runs in a child process, so
the figures are the gateway side only: drivers, scheduler, pymodbus client, event loop.
CPU is this process's CPU time (user + system, all threads, ``os.times``), not
wall clock, divided by the requests the links sent in the window; on a shared machine
repeat (``--repeat``) and report the range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus.planner import TCP, Limits, WireCost, coalesce
from drivers.modbus.profiles import load_profile
from drivers.modbus.sim import Device, TcpSim, Units
from drivers.modbus.tests.harness import Fleet, tcp_bus
from tests.support.servers import free_port

MODBUS_PROFILES = ("eastron-sdm630", "chint-ddsu666", "water-meter-ultrasonic",
                   "barrier-gate-controller")
SDM630_FIVE = ("voltage_l1", "current_l1", "power_total", "frequency", "energy_import")
TRANSPORTS: dict[str, WireCost] = {"TCP": TCP, "RTU 9600 8N1": WireCost.serial(9600),
                                   "RTU 19200 8E1": WireCost.serial(19200, 11)}


OLD_MAX_GAP = {"eastron-sdm630": 16, "chint-ddsu666": 4, "water-meter-ultrasonic": 8,
               "barrier-gate-controller": 8}
"""The fixed gaps the shipped profiles set before the planner decided by cost."""


def requests_per_profile() -> None:
    """Requests per cycle with default settings, per transport, and with the old fixed gap."""
    print("| profile | points | " + " | ".join(TRANSPORTS) + " | before (fixed max_gap) "
          "| one-per-point |")
    print("|---|---:|" + "---:|" * (len(TRANSPORTS) + 2))
    rows = [(name, load_profile(name).points) for name in MODBUS_PROFILES]
    five = [p for p in load_profile("eastron-sdm630").points if p.name in SDM630_FIVE]
    rows.insert(1, ("eastron-sdm630, the five workload points", five))
    for name, points in rows:
        profile = load_profile(name.split(",")[0])
        limit = profile.max_registers or 125
        counts = [len(coalesce(points, Limits(limit, 2000, profile.max_gap, cost)))
                  for cost in TRANSPORTS.values()]
        before = len(coalesce(points, Limits(limit, 2000, OLD_MAX_GAP[profile.name])))
        print(f"| {name} | {len(points)} | " + " | ".join(map(str, counts))
              + f" | {before} | {len(points)} |")


@contextlib.contextmanager
def simulator(devices: int) -> Iterator[int]:
    """``devices`` SDM630 meters served in a child process (its CPU is not the gateway's);
    yields their port."""
    port = free_port()
    mp = multiprocessing.get_context("spawn")
    ready = mp.Event()
    child = mp.Process(target=serve, args=(port, devices, ready), daemon=True)
    child.start()
    try:
        if not ready.wait(30):
            raise SystemExit("simulator did not start")
        yield port
    finally:
        child.terminate()
        child.join(5)


def serve(port: int, devices: int, ready: Any) -> None:
    """The simulated meters, in a child process (its CPU is not the gateway's)."""
    async def main() -> None:
        profile = load_profile("eastron-sdm630")
        device = Device()
        for i, point in enumerate(profile.points):
            device.put(point, float(i))
        units = Units({u: device for u in range(1, devices + 1)})
        await TcpSim(units, port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def tcp_fleet(args: argparse.Namespace, port: int) -> float:
    """One measured run; returns CPU ms per request."""
    profile = load_profile("eastron-sdm630")
    keep = SDM630_FIVE if args.points == "five" else tuple(p.name for p in profile.points)
    off = {p.name: {"enabled": False} for p in profile.points if p.name not in keep}
    fleet = Fleet({"tcp": tcp_bus(port, timeout=2.0)})
    drivers = [fleet.add(id=f"d{u}", bus="tcp", unit=u, profile="eastron-sdm630",
                         overrides=off, interval=args.interval)
               for u in range(1, args.devices + 1)]
    await fleet.start()
    bus = drivers[0].bus
    assert bus is not None  # started
    link = bus.link  # one TCP bus: one link shared by every device
    await asyncio.sleep(args.warmup)
    c0, q0, t0, p0 = (sum(d.cycles for d in drivers), link.requests, time.monotonic(),
                      os.times())
    await asyncio.sleep(args.seconds)
    c1, q1, t1, p1 = (sum(d.cycles for d in drivers), link.requests, time.monotonic(),
                      os.times())
    missed = sum(d.timer.missed for d in drivers)
    errors = sum(sum(d.ctx.status.counters.values()) for d in drivers)
    await fleet.stop()
    user, system = p1.user - p0.user, p1.system - p0.system
    wall, cpu, requests = t1 - t0, user + system, max(q1 - q0, 1)
    per_cycle = len(drivers[0].plan)
    print(f"  polls/s {(c1 - c0) / wall:.0f} (target {args.devices / args.interval:.0f}), "
          f"{per_cycle} request(s)/poll, requests/s {requests / wall:.0f}; gateway CPU "
          f"{100 * cpu / wall:.1f}% of one core = {1000 * cpu / requests:.3f} ms per request "
          f"({1000 * user / requests:.3f} user + {1000 * system / requests:.3f} system); "
          f"missed slots {missed}, device counters {errors}, max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 1000 * cpu / requests


def whole_gateway(args: argparse.Namespace, port: int) -> float:
    """``python -m gateway run`` with the workload and the default file sink; returns its
    CPU share of one core (all threads, /proc/PID/stat) over the window."""
    import tempfile

    from bench_throughput import Gateway, cpu_seconds

    profile = load_profile("eastron-sdm630")
    off = ", ".join(f"{p.name}: {{enabled: false}}" for p in profile.points
                    if p.name not in SDM630_FIVE)
    base = Path(tempfile.mkdtemp(prefix="iotgw-bench-modbus-"))
    lines = ["gateway: {id: gw-m, site: bench, data_dir: data}",
             f"buses: {{meters: {{type: tcp, host: 127.0.0.1, port: {port}}}}}", "devices:"]
    lines += [f"  - {{id: m{u:03d}, driver: modbus, bus: meters, unit: {u}, "
              f"profile: eastron-sdm630, interval: {args.interval}s, overrides: {{{off}}}}}"
              for u in range(1, args.devices + 1)]
    (base / "gw.yaml").write_text("\n".join(lines) + "\n")
    gw = Gateway(base / "gw.yaml", cpu=None, log=base / "gateway.log")
    try:
        gw.wait_log("running:")
        time.sleep(args.warmup)
        c0, t0 = cpu_seconds(gw.pid), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = cpu_seconds(gw.pid), time.monotonic()
    finally:
        gw.stop()
    share = 100 * (c1 - c0) / (t1 - t0)
    print(f"  whole gateway process (file sink): CPU {share:.1f}% of one core "
          f"(work dir {base})")
    return share


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--points", choices=("five", "all"), default="five")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gateway", action="store_true",
                        help="also run `python -m gateway run` on the workload (file sink) "
                        "and report its whole-process CPU")
    args = parser.parse_args()
    requests_per_profile()
    with simulator(args.devices) as port:
        print(f"\nModbus TCP, {args.devices} x eastron-sdm630 ({args.points} points), "
              f"interval {args.interval:g}s, one TCP bus, default settings; simulator in a "
              f"child process, CPU of the gateway side only (os.times), "
              f"{args.seconds:g}s windows:")
        figures = [asyncio.run(tcp_fleet(args, port)) for _ in range(args.repeat)]
        print(f"CPU per request: {min(figures):.3f}-{max(figures):.3f} ms "
              f"over {len(figures)} runs")
        if args.gateway:
            shares = [whole_gateway(args, port) for _ in range(args.repeat)]
            print(f"whole gateway CPU: {min(shares):.1f}-{max(shares):.1f}% of one core "
                  f"over {len(shares)} runs")


if __name__ == "__main__":
    main()
