"""Time and memory of ``iotgw check`` on generated configs of N devices.

Run: ``.venv/bin/python bench/bench_config.py [--devices 1000,5000,20000] [--profile]``.

Each config is what a large compound looks like: Modbus meters on RS-485 lines and
TCP gateways (200 units per bus, half of them with a profile), DL/T 645 meters, MQTT
cameras and synthetic test devices, with tags. Every config is checked in a fresh
``iotgw check`` subprocess so the figures include start-up and the peak RSS is the
process's own (``ru_maxrss`` of the child). ``--profile`` prints the top of a cProfile
of one in-process ``load_config`` on the largest config, to find the super-linear part.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNITS_PER_BUS = 200


def device_lines(index: int) -> list[str]:
    """One device of the compound, in the block style installers write."""
    kind = index % 4
    bus = f"line-{index // UNITS_PER_BUS:04d}"
    unit = index % UNITS_PER_BUS + 1
    tags = f'{{building: "{index // 40}", unit: "{index % 40}"}}'
    if kind == 0:
        extra = ["    profile: eastron-sdm630"] if index % 8 == 0 else [
            "    points:",
            "      - {name: energy, table: input, address: 0, type: float32}",
            "      - {name: power, table: input, address: 12, type: float32}"]
        return [f"  - id: meter-{index:06d}", "    driver: modbus", f"    bus: {bus}",
                f"    unit: {unit}", *extra, "    interval: 30s", f"    tags: {tags}"]
    if kind == 1:
        return [f"  - id: em-{index:06d}", "    driver: dlt645", f"    bus: {bus}",
                f'    address: "{index:012d}"', "    interval: 5m", f"    tags: {tags}"]
    if kind == 2:
        return [f"  - id: cam-{index:06d}", "    driver: mqtt", "    profile: mqtt-frigate-events",
                f"    topic: frigate/cam{index}/events", f"    tags: {tags}"]
    return [f"  - id: synth-{index:06d}", "    driver: synthetic", "    interval: 10s",
            "    fields: 2", f"    tags: {tags}"]


def make_config(devices: int) -> str:
    buses = -(-devices // UNITS_PER_BUS)
    lines = ["gateway: {id: gw-bench, site: bench-site, data_dir: /tmp/iotgw-bench-config}",
             "mqtt: {host: 127.0.0.1, base_topic: iotgw/bench}",
             "buses:"]
    lines += [f"  line-{b:04d}: {{type: tcp, host: 10.1.{b // 250}.{b % 250 + 1}, port: 502}}"
              for b in range(buses)]
    lines.append("devices:")
    for index in range(devices):
        lines += device_lines(index)
    return "\n".join(lines) + "\n"


def check_once(path: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (KiB) of one ``iotgw check`` process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "check", str(path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"check failed ({proc.returncode}):\n{errors[-2000:].decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def profile(path: Path) -> None:
    from gateway.config.loader import load_config

    profiler = cProfile.Profile()
    profiler.enable()
    load_config(path)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1000,5000,20000",
                        help="comma-separated device counts")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        previous: tuple[int, float] | None = None
        for count in counts:
            path = Path(tmp) / f"gw-{count}.yaml"
            path.write_text(make_config(count))
            wall, cpu, rss = check_once(path)
            per_device = cpu / count * 1e6
            growth = ""
            if previous is not None:
                growth = (f", CPU x{cpu / previous[1]:.1f} for devices "
                          f"x{count / previous[0]:.1f}")
            print(f"{count:>7,} devices  {path.stat().st_size / 1024**2:6.2f} MiB  "
                  f"wall {wall:6.2f} s  CPU {cpu:6.2f} s ({per_device:,.0f} µs/device)  "
                  f"peak RSS {rss / 1024:6.0f} MiB{growth}")
            previous = (count, cpu)
        if args.profile:
            profile(Path(tmp) / f"gw-{counts[-1]}.yaml")


if __name__ == "__main__":
    main()
