"""Modbus driver figures: requests per poll cycle per shipped profile (vs one request per
point), and polls/s over Modbus TCP with N simulated devices, with RSS and CPU.

    .venv/bin/python bench/bench_modbus.py [--devices 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus.planner import Limits, coalesce
from drivers.modbus.profiles import load_profile
from drivers.modbus.tests.harness import Fleet, tcp_bus
from drivers.modbus.tests.sim import Device, TcpSim, Units
from tests.servers import free_port

MODBUS_PROFILES = ("eastron-sdm630", "chint-ddsu666", "water-meter-ultrasonic",
                   "barrier-gate-controller")


def requests_per_profile() -> None:
    print("| profile | points | requests/cycle | one-per-point |")
    print("|---|---:|---:|---:|")
    for name in MODBUS_PROFILES:
        profile = load_profile(name)
        limits = Limits(profile.max_registers or 125, 2000,
                        16 if profile.max_gap is None else profile.max_gap)
        plan = coalesce(profile.points, limits)
        print(f"| {name} | {len(profile.points)} | {len(plan)} | {len(profile.points)} |")


async def tcp_fleet(devices: int, seconds: float, interval: float) -> None:
    profile = load_profile("eastron-sdm630")
    device = Device()
    for i, point in enumerate(profile.points):
        device.put(point, float(i))
    units = Units({u: device for u in range(1, devices + 1)})
    server = await TcpSim(units, free_port()).start()
    fleet = Fleet({"tcp": tcp_bus(server.port)})
    drivers = [fleet.add(id=f"d{u}", bus="tcp", unit=u, profile="eastron-sdm630",
                         interval=interval) for u in range(1, devices + 1)]
    await fleet.start()
    await asyncio.sleep(1.0)  # warm up
    c0, t0 = sum(d.cycles for d in drivers), time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(seconds)
    c1, t1 = sum(d.cycles for d in drivers), time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    missed = sum(d.timer.missed for d in drivers)
    await fleet.stop()
    await server.stop()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    polls = (c1 - c0) / (t1 - t0)
    print(f"\nModbus TCP, {devices} devices x eastron-sdm630 (4 requests/poll), interval "
          f"{interval}s, one connection (one TCP bus), server in the same process:")
    print(f"  polls/s {polls:.0f} (target {devices / interval:.0f}), requests/s {polls * 4:.0f}, "
          f"missed slots {missed}")
    print(f"  CPU {100 * cpu / (t1 - t0):.0f}% of one core (gateway + simulator), "
          f"max RSS {r1.ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    requests_per_profile()
    asyncio.run(tcp_fleet(args.devices, args.seconds, args.interval))


if __name__ == "__main__":
    main()
