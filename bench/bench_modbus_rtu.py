"""Modbus RTU on an emulated 9600-baud RS-485 line: polls/s as a share of the line's limit.

    .venv/bin/python bench/bench_modbus_rtu.py [--units 4] [--seconds 10]
        [--registers 2,10,60,125] [--parity E] [--baudrate 9600]

The line (a :class:`PacedLine`: two pty pairs joined by a thread that paces bytes at the
baud rate, half-duplex) and a pymodbus RTU server with ``--units`` unit ids run in a
child process, so the device side does not share the gateway's event loop or CPU. The
gateway side is the real driver: one ``ModbusDriver`` per unit id on one serial bus (one
pymodbus client, one ``BusScheduler``), interval far below what the line can carry, so
every device is always due and the bus is never idle by choice.

Theoretical maximum per request: ``(request + response bytes) * bits per character /
baud + 2 * 3.5 characters`` (the device's end-of-frame silence before it may answer,
the gateway's before its next request); bits per character: 1 start + 8 data + parity +
stop (8E1 = 11, 8N1 = 10). A read of n registers is 8 bytes out, 5 + 2n back.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.modbus.sim import Device, PacedLine, RtuSim, Units
from drivers.modbus.tests.harness import Fleet
from gateway.config.models import SerialBus


def bits_per_char(parity: str, stopbits: int = 1) -> int:
    return 1 + 8 + (parity != "N") + stopbits


def request_time(registers: int, baudrate: int, bits: int) -> float:
    """Seconds one read of ``registers`` holding registers needs on the line, gaps included."""
    char = bits / baudrate
    gap = 3.5 * char if baudrate <= 19200 else 0.00175
    return (8 + 5 + 2 * registers) * char + 2 * gap


def device(registers: int, unit: int) -> Device:
    return Device(holding={a: (unit << 8) + a for a in range(registers)})


def serve_line(conn: Any, units: list[int], registers: int, baudrate: int, bits: int) -> None:
    """Child process: the paced line and the RTU server, until the parent says stop."""

    async def main() -> None:
        line = PacedLine(baudrate, bits_per_char=bits, record=True).start()
        sim = Units({u: device(registers, u) for u in units})
        server = await RtuSim(sim, line.server_port, baudrate).start()
        conn.send(line.client_port)
        window = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        conn.send({"requests": {u: sim.count(u) for u in units}, "frames": line.frames,
                   **turnarounds(line.trace, *window)})
        await server.stop()
        line.stop()

    asyncio.run(main())


def turnarounds(trace: list[tuple[str, float, float, int]], t0: float, t1: float
                ) -> dict[str, float]:
    """Mean seconds, within [t0, t1], from a reply reaching the gateway to its next request
    reaching the line (``gateway``: includes the 3.5-character silence it must keep), and
    from a request reaching the device to its reply (``device``: the simulator's own
    processing; the device's 3.5-character silence is already in the line's delivery)."""
    gateway: list[float] = []
    device: list[float] = []
    for prev, cur in itertools.pairwise(trace):
        if not (t0 <= prev[1] and cur[2] <= t1):
            continue
        if prev[0] == "down" and cur[0] == "up":
            gateway.append(cur[1] - prev[2])
        elif prev[0] == "up" and cur[0] == "down":
            device.append(cur[1] - prev[2])
    return {"gateway_turnaround": statistics.fmean(gateway) if gateway else math.nan,
            "gateway_max": max(gateway, default=math.nan),
            "device_turnaround": statistics.fmean(device) if device else math.nan}


async def run_gateway(port: str, units: list[int], registers: int, baudrate: int, parity: str,
                      seconds: float, warmup: float) -> dict[str, Any]:
    # Linux ptys refuse parity (tcsetattr EINVAL): 8E1 is emulated as 8N2, the same
    # 11-bit character, so the driver's 3.5-character silence is the 8E1 one.
    stopbits = 1 if parity == "N" else 2
    bus = SerialBus(type="serial", port=port, baudrate=baudrate, stopbits=stopbits,
                    timeout=0.5)
    fleet = Fleet({"rs485": bus})
    points = [{"name": f"r{a}", "address": a} for a in range(registers)]
    drivers = [fleet.add(id=f"u{u}", bus="rs485", unit=u, points=points, interval=0.001,
                         retries=1) for u in units]
    await fleet.start()
    await asyncio.sleep(warmup)
    link = drivers[0].bus.link if drivers[0].bus else None
    assert link is not None
    c0, q0, t0 = sum(d.cycles for d in drivers), link.requests, time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(seconds)
    c1, q1, t1 = sum(d.cycles for d in drivers), link.requests, time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    errors = {d.ctx.device_id: {k: v for k, v in d.ctx.status.counters.items() if v}
              for d in drivers}
    per_unit = [d.cycles for d in drivers]
    sample = dict(fleet.readings[drivers[-1].ctx.device_id][-1].fields)
    await fleet.stop()
    expected = {f"r{a}": (units[-1] << 8) + a for a in range(registers)}
    assert sample == expected, "decoded values differ from the simulator's"
    return {"window": (t0, t1), "polls": (c1 - c0) / (t1 - t0), "requests": (q1 - q0) / (t1 - t0),
            "cpu": ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)) / (t1 - t0),
            "errors": errors, "per_unit": per_unit}


def one(registers: int, args: argparse.Namespace) -> dict[str, Any]:
    units = list(range(1, args.units + 1))
    bits = bits_per_char(args.parity)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_line,
                       args=(child, units, registers, args.baudrate, bits), daemon=True)
    proc.start()
    try:
        if not parent.poll(20):
            raise RuntimeError("line/simulator process did not start")
        port = parent.recv()
        result = asyncio.run(run_gateway(port, units, registers, args.baudrate, args.parity,
                                         args.seconds, args.warmup))
        parent.send(result["window"])
        result["line"] = parent.recv() if parent.poll(10) else {}
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    per_request = request_time(registers, args.baudrate, bits)
    result["theory"] = 1 / per_request
    result["share"] = result["polls"] / result["theory"]
    result["registers"] = registers
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--registers", default="2,10,60,125",
                        help="registers per poll (one read each), comma-separated")
    parser.add_argument("--baudrate", type=int, default=9600)
    parser.add_argument("--parity", default="E", choices=["N", "E", "O"])
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    bits = bits_per_char(args.parity)
    print(f"Modbus RTU, {args.baudrate} baud 8{args.parity}1 ({bits}-bit characters), "
          f"{args.units} unit ids on one line, one read per poll, {args.seconds:.0f} s each")
    gap = 3.5 * bits / args.baudrate if args.baudrate <= 19200 else 0.00175
    print("| registers/read | frame bytes (req+resp) | theoretical polls/s | achieved polls/s "
          f"| share | gateway turnaround (min {1e3 * gap:.2f}) | simulator turnaround "
          "| gateway CPU | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for registers in (int(r) for r in args.registers.split(",")):
        r = one(registers, args)
        line = r["line"]
        errors = {k: v for k, v in r["errors"].items() if v} or "none"
        print(f"| {registers} | 8+{5 + 2 * registers} | {r['theory']:.1f} | {r['polls']:.1f} "
              f"| {100 * r['share']:.1f} % "
              f"| {1e3 * line.get('gateway_turnaround', math.nan):.2f} ms "
              f"| {1e3 * line.get('device_turnaround', math.nan):.2f} ms "
              f"| {100 * r['cpu']:.0f} % | {errors} |", flush=True)
        if args.verbose:
            print(f"  per unit polls {r['per_unit']}, line {r['line']}")


if __name__ == "__main__":
    main()
