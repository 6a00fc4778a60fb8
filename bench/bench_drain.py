"""Backlog drain: how fast a gateway empties a full buffer into VictoriaMetrics.

Run: ``.venv/bin/python bench/bench_drain.py [--readings 1000000]``.

1. Pre-fills a buffer with ``--readings`` realistic readings (synthetic-driver values, 4
   float fields + the integer ``seq``, tagged site/gateway/device across ``--devices``
   devices, 1 ms apart, ending ten minutes ago), encoded with
   ``gateway.lineprotocol.encode_many`` and committed with ``gateway.buffer.Buffer`` in
   batches of 5000 lines, exactly what the pipeline writes (~120-byte lines, 2000-line
   chunks). This is an outage's backlog, without waiting for it to accumulate.
2. Starts a private VictoriaMetrics and ``python -m gateway run`` with no devices and one
   ``influxdb`` sink (defaults: batch_lines 5000, gzip on), pinned to CPU 1 (VM on CPU 0)
   when ``taskset`` is available.
3. Times from process start until the sink's lag (``read_stats``) is 0, and separately
   from the "running" log line (start-up includes the buffer's ``quick_check``).
4. Counts what VictoriaMetrics holds: ``synthetic_seq`` samples must equal the readings,
   and all samples must equal readings x (fields + 1).

Target: 1,000,000 readings drained in <= 30 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_throughput import (
    ROOT,
    SINK,
    Gateway,
    can_pin,
    cpu_seconds,
    cpu_share,
    cpu_ticks,
    mib,
    proc_status,
    start_vm,
    vm_count,
    write_config,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from drivers.synthetic.driver import field_values
from gateway.buffer import Buffer, read_stats
from gateway.lineprotocol import encode_many
from gateway.reading import Reading

COMMIT_LINES = 5000  # the pipeline's FLUSH_LINES


def prefill(path: Path, readings: int, devices: int, fields: int) -> tuple[int, float]:
    """Commit ``readings`` lines to a fresh buffer; returns (payload bytes, seconds)."""
    start = time.perf_counter()
    step = 1_000_000  # 1 ms
    per_device = -(-readings // devices)
    k0 = (time.time_ns() - 600 * 10**9) // step - per_device
    buf = Buffer(path, 2 * 1024**3, "drop_oldest", synchronous="full")
    buf.open()
    tags = [{"site": "bench", "gateway": "gw-b", "device": f"d{d:03d}"} for d in range(devices)]
    written = 0
    try:
        while written < readings:
            # Interleave devices like the pipeline does: each commit holds every device.
            batch: list[Reading] = []
            k = k0 + written // devices
            while len(batch) < COMMIT_LINES and written + len(batch) < readings:
                for tag in tags:
                    if len(batch) >= COMMIT_LINES or written + len(batch) >= readings:
                        break
                    batch.append(Reading("synthetic", tag, field_values(k, fields), k * step))
                k += 1
            lines = encode_many(batch)
            buf.append(lines, batch[0].time_ns, batch[-1].time_ns)
            written += len(batch)
        stats = buf.stats()
    finally:
        buf.close()
    assert stats.depth_lines == readings, stats
    return stats.bytes_held, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    pinned = can_pin() and not args.no_pin
    gw_cpu, vm_cpu = (1, 0) if pinned else (None, None)
    if pinned:
        os.sched_setaffinity(0, {0})  # keep this script off the gateway's CPU
    base = Path(tempfile.mkdtemp(prefix="iotgw-bench-drain-", dir=args.dir))
    print(f"drain: {args.readings:,} readings from {args.devices} devices, {args.fields} fields; "
          f"sink batch_lines {args.batch_lines or 5000}, gzip {'on' if args.gzip else 'off'}")
    print(f"pinning: {'gateway on CPU 1, VictoriaMetrics on CPU 0 (taskset)' if pinned else 'none'}"
          f"; work dir {base}")
    buffer = base / "data" / "buffer.db"
    nbytes, took = prefill(buffer, args.readings, args.devices, args.fields)
    print(f"pre-filled {args.readings:,} lines, {mib(nbytes)} payload, file "
          f"{mib(buffer.stat().st_size)} in {took:.1f} s")
    vm = start_vm(base, vm_cpu)
    gw: Gateway | None = None
    try:
        config = base / "gw.yaml"
        write_config(config, sink_url=vm.url, devices=0, interval="1ms", fields=args.fields,
                     batch_lines=args.batch_lines, gzip=args.gzip)
        ticks0 = cpu_ticks(gw_cpu)
        vm_cpu0 = cpu_seconds(vm.pid) if vm.pid else 0.0
        gw = Gateway(config, cpu=gw_cpu, log=base / "gateway.log")
        running_at = gw.wait_log("running:")
        peak_rss = 0
        while True:
            if not gw.alive():
                raise RuntimeError(f"gateway died: {gw.tail()}")
            stats = read_stats(buffer)
            if SINK in stats.sinks and stats.sinks[SINK].lag_lines == 0:
                break
            if time.monotonic() - gw.started > args.timeout:
                raise RuntimeError(f"not drained after {args.timeout:.0f}s: {stats.sinks}")
            peak_rss = max(peak_rss, proc_status(gw.pid)["VmRSS"])
            time.sleep(0.05)
        total = time.monotonic() - gw.started
        cpu = cpu_seconds(gw.pid)
        ticks1 = cpu_ticks(gw_cpu)
        vm_used = (cpu_seconds(vm.pid) if vm.pid else 0.0) - vm_cpu0
        status = proc_status(gw.pid)
        gw.stop()
        gw = None
        drain = total - running_at
        print()
        print(f"start-up (to 'running')  {running_at:6.2f} s")
        print(f"drain (running -> lag 0) {drain:6.2f} s  ({args.readings / drain:,.0f} readings/s)")
        print(f"total (start -> lag 0)   {total:6.2f} s  ({args.readings / total:,.0f} readings/s)")
        print(f"gateway CPU              {cpu:6.2f} s  ({100 * cpu / total:.0f}% of one core "
              "over the total)")
        share = cpu_share(gw_cpu, ticks0, ticks1, 100 * cpu / total)
        if share:
            print(f"shared CPU               {share}")
        print(f"VictoriaMetrics CPU      {vm_used:6.2f} s  "
              f"({100 * vm_used / total:.0f}% of one core)")
        print(f"gateway RSS              {mib(peak_rss)} peak sampled, VmHWM "
              f"{mib(status['VmHWM'])}")
        seq = vm_count(vm, "synthetic_seq")
        samples = vm_count(vm, '{__name__=~"synthetic_.*"}')
        want = args.readings * (args.fields + 1)
        ok = seq == args.readings and samples == want
        print(f"VictoriaMetrics          {seq:,} synthetic_seq samples (want {args.readings:,}), "
              f"{samples:,} samples in all (want {want:,}): {'OK' if ok else 'MISMATCH'}")
        met = total <= 30.0
        print(f"target <= 30 s for {args.readings:,} readings: {'MET' if met else 'NOT MET'} "
              f"({total:.1f} s from process start)")
        return 0 if met and ok else 1
    finally:
        if gw is not None:
            gw.stop()
        vm.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--fields", type=int, default=4)
    p.add_argument("--batch-lines", type=int, default=None, help="sink batch_lines (default 5000)")
    p.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=True,
                   help="sink gzip setting (the config default is on)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--dir", default=None, help="work dir parent (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    return run(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
