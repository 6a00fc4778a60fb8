"""Machine instructions per Modbus poll, counted by valgrind: a CPU figure that does not
move with the load of a shared machine.

    .venv/bin/python bench/bench_modbus_instructions.py [--devices 20] [--short 10]
        [--long 30]

The workload of bench_modbus.py (SDM630 meters, the five float32 points, one Modbus TCP
bus, 1 s poll, default settings), gateway side only: drivers, bus scheduler, the Modbus
client, decode and the event loop, in one process run under ``valgrind --tool=callgrind``
twice (``--short`` and ``--long`` seconds); the pymodbus simulator runs outside valgrind
in a child process. Start-up (imports, config) costs the same in both runs, so the
difference in instructions divided by the difference in requests is the cost of one
poll. Instructions are not time: cache misses and the wake-ups of an idle event loop
cost more than their count (docs/benchmarks.md), so this compares code paths, and the
CPU-seconds figures of bench_modbus.py say what a poll costs on this machine.
``--devices`` is kept small because valgrind runs the gateway side ~50x slower.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


async def fleet(port: int, devices: int, seconds: float) -> None:
    """The measured side: ``devices`` meters polled for ``seconds``; prints the requests."""
    from bench_modbus import SDM630_FIVE

    from drivers.modbus.profiles import load_profile
    from drivers.modbus.tests.harness import Fleet, tcp_bus

    profile = load_profile("eastron-sdm630")
    off = {p.name: {"enabled": False} for p in profile.points if p.name not in SDM630_FIVE}
    meters = Fleet({"tcp": tcp_bus(port, timeout=5.0)})
    drivers = [meters.add(id=f"d{u}", bus="tcp", unit=u, profile="eastron-sdm630",
                          overrides=off, interval=1.0) for u in range(1, devices + 1)]
    await meters.start()
    bus = drivers[0].bus
    assert bus is not None  # started
    await asyncio.sleep(seconds)
    errors = sum(sum(d.ctx.status.counters.values()) for d in drivers)
    print(f"requests {bus.link.requests} errors {errors}", flush=True)
    await meters.stop()


def counted(port: int, devices: int, seconds: float, out: Path) -> tuple[int, int]:
    """(instructions, requests) of one run under callgrind."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         __file__, "--fleet", str(port), "--devices", str(devices), "--short", str(seconds)],
        cwd=ROOT, capture_output=True, text=True, check=True)
    instructions = re.search(r"Collected : (\d+)", proc.stderr)
    requests = re.search(r"requests (\d+) errors (\d+)", proc.stdout)
    if instructions is None or requests is None:
        raise SystemExit(f"unexpected output:\n{proc.stdout}\n{proc.stderr[-2000:]}")
    if int(requests[2]):
        raise SystemExit(f"the devices counted errors: {proc.stdout}")
    return int(instructions[1]), int(requests[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--short", type=float, default=10.0)
    parser.add_argument("--long", type=float, default=30.0)
    parser.add_argument("--fleet", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fleet is not None:  # the child valgrind runs
        asyncio.run(fleet(args.fleet, args.devices, args.short))
        return

    from bench_modbus import simulator

    with simulator(args.devices) as port:
        work = Path(tempfile.mkdtemp(prefix="iotgw-bench-cg-"))
        i1, r1 = counted(port, args.devices, args.short, work / "short.out")
        i2, r2 = counted(port, args.devices, args.long, work / "long.out")
    print(f"{args.devices} SDM630 x 5 points over Modbus TCP, 1 s poll, gateway side under "
          f"callgrind: {args.short:g} s run {i1:,} instructions / {r1} requests, "
          f"{args.long:g} s run {i2:,} / {r2}")
    print(f"instructions per poll (one request each): {(i2 - i1) / max(r2 - r1, 1):,.0f} "
          f"(callgrind files in {work})")


if __name__ == "__main__":
    main()
