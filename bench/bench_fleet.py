"""Fleet benchmark: N gateway processes (one per compound) into one VictoriaMetrics.

Each gateway has its own data dir, gateway id and ``--devices`` synthetic devices at
``--interval``; all write to the same store. For each N the script reports the aggregate
rate the store acknowledged, what every gateway and the store cost in CPU and memory, and
then checks that the store holds exactly what the gateways committed.

    .venv/bin/python bench/bench_fleet.py                # N = 1, 4, 16
    .venv/bin/python bench/bench_fleet.py --fleet 1 4 16 --devices 20 --interval 100ms
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import (
    Gateway,
    committed_this_run,
    cpu_seconds,
    mib,
    proc_status,
    start_vm,
    vm_count,
)

from gateway.buffer import read_stats


def write_config(path: Path, index: int, url: str, devices: int, interval: str) -> None:
    lines = [f"gateway: {{id: gw-{index:02d}, site: fleet-{index:02d}, data_dir: data}}",
             "sinks:",
             f"  - {{type: influxdb, name: vm, url: '{url}', bucket: b, token: t}}",
             "devices:" if devices else "devices: []"]
    lines += [f"  - {{id: m{d:03d}, driver: synthetic, interval: {interval}, fields: 4}}"
              for d in range(devices)]
    path.write_text("\n".join(lines) + "\n")


def acked_total(dirs: list[Path]) -> int:
    total = 0
    for d in dirs:
        stats = read_stats(d / "data" / "buffer.db")
        total += stats.committed_total - stats.sinks["vm"].lag_lines
    return total


def run_fleet(n: int, args: argparse.Namespace, base: Path) -> None:
    vm = start_vm(base / f"vm-{n}", None)
    dirs = [base / f"n{n}-gw{i:02d}" for i in range(n)]
    gateways: list[Gateway] = []
    try:
        for i, d in enumerate(dirs):
            d.mkdir(parents=True)
            write_config(d / "gw.yaml", i, vm.url, args.devices, args.interval)
            gateways.append(Gateway(d / "gw.yaml", cpu=None, log=d / "gw.log"))
        for gw in gateways:
            gw.wait_log("running")
        time.sleep(args.warmup)
        acked0, t0 = acked_total(dirs), time.monotonic()
        cpu0 = [cpu_seconds(gw.pid) for gw in gateways]
        vm_cpu0 = cpu_seconds(vm.pid) if vm.pid else 0.0
        rss: list[int] = []
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            rss += [proc_status(gw.pid)["VmRSS"] for gw in gateways]
        elapsed = time.monotonic() - t0
        acked1 = acked_total(dirs)
        cpu = [(cpu_seconds(gw.pid) - c) / elapsed for gw, c in zip(gateways, cpu0, strict=True)]
        vm_cpu = ((cpu_seconds(vm.pid) if vm.pid else 0.0) - vm_cpu0) / elapsed
        lag = sum(read_stats(d / "data" / "buffer.db").sinks["vm"].lag_lines for d in dirs)
    finally:
        codes = [gw.stop() for gw in gateways]
    committed = sum(committed_this_run(d / "gw.log") for d in dirs)
    for i, d in enumerate(dirs):  # deliver what was still buffered at the stop
        write_config(d / "gw.yaml", i, vm.url, 0, args.interval)
        drain = Gateway(d / "gw.yaml", cpu=None, log=d / "drain.log")
        drain.wait_log("running")
        while read_stats(d / "data" / "buffer.db").sinks["vm"].lag_lines:
            time.sleep(0.1)
        drain.stop()
    stored = vm_count(vm)
    vm.stop()
    offered = n * args.devices / parse_interval(args.interval)
    print(f"N={n:<3} offered {offered:>8,.0f}/s  store acked {(acked1 - acked0) / elapsed:>8,.0f}/s"
          f"  lag at end {lag:>6,}  gateway CPU mean {100 * sum(cpu) / n:4.1f}% "
          f"max {100 * max(cpu):4.1f}%  RSS mean {mib(sum(rss) / len(rss))}"
          f"  VM CPU {100 * vm_cpu:4.1f}%  exit codes {sorted(set(codes))}"
          f"  store holds {stored:,} of {committed:,} committed: "
          f"{'OK' if stored == committed else 'MISMATCH'}", flush=True)


def parse_interval(text: str) -> float:
    from gateway.config.types import parse_duration

    return parse_duration(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fleet", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--devices", type=int, default=20, help="synthetic devices per gateway")
    p.add_argument("--interval", default="100ms")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotgw-fleet-") as tmp:
        for n in args.fleet:
            run_fleet(n, args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
