"""Throughput of gateway.buffer: appends (synchronous full and normal) and a read+ack drain.

Run: ``.venv/bin/python bench/bench_buffer.py [--lines N] [--dir DIR]``. ``DIR`` should be on
the disk the gateway will use (the default is the system temp directory; a tmpfs there makes
fsync free and the figures meaningless for durability). Lines are ~100-byte line protocol,
appended in batches of 5000 as the pipeline does; the drain reads batches of 5000 lines for
one sink and acknowledges each (so every ack also prunes), as a forwarder does.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from gateway.buffer import Buffer, Synchronous, read_stats

BATCH = 5000
T0 = 1_700_000_000_000_000_000


def make_lines(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        line = (
            b"energy_meter,site=compound-north,device=meter-%03d power_kw=%.3f,energy_wh=%di %d"
            % (i % 50, (i % 9000) / 1000, 10_000_000 + i, T0 + i * 1_000_000)
        )
        out.append(line)
    return out


def bench_append(directory: Path, lines: list[bytes], synchronous: Synchronous) -> Path:
    path = directory / f"append-{synchronous}.db"
    buf = Buffer(path, 8 * 1024**3, "drop_oldest", synchronous=synchronous)
    buf.open()
    buf.register_sinks(["influx"])
    start = time.perf_counter()
    for i in range(0, len(lines), BATCH):
        buf.append(lines[i : i + BATCH], T0 + i, T0 + i + BATCH)
    elapsed = time.perf_counter() - start
    commits = -(-len(lines) // BATCH)
    print(
        f"append  synchronous={synchronous:<6} {len(lines) / elapsed:>12,.0f} lines/s  "
        f"({commits / elapsed:,.0f} commits/s of {BATCH}, {len(lines):,} lines in {elapsed:.2f} s)"
    )
    buf.close()
    return path


def bench_small_commits(directory: Path, lines: list[bytes], synchronous: Synchronous) -> None:
    """Commits of 50 lines for 2 s: what a quiet site costs, bound by fsync latency."""
    path = directory / f"small-{synchronous}.db"
    buf = Buffer(path, 8 * 1024**3, "drop_oldest", synchronous=synchronous)
    buf.open()
    commits = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < 2.0:
        buf.append(lines[:50], T0, T0 + 50)
        commits += 1
    print(
        f"small   synchronous={synchronous:<6} {commits / elapsed:>12,.0f} commits/s of 50 lines "
        f"({elapsed / commits * 1000:.2f} ms per commit)"
    )
    buf.close()


def bench_open_and_stats(path: Path) -> None:
    buf = Buffer(path, 8 * 1024**3, "drop_oldest")
    start = time.perf_counter()
    buf.open()
    opened = time.perf_counter() - start
    start = time.perf_counter()
    buf.stats()
    stats_s = time.perf_counter() - start
    start = time.perf_counter()
    stats = read_stats(path)
    ro_s = time.perf_counter() - start
    size = stats.file_bytes / 1024**2
    print(
        f"open with quick_check of {stats.depth_lines:,} lines ({size:.0f} MiB): {opened:.2f} s; "
        f"stats(): {stats_s * 1000:.1f} ms; read_stats(): {ro_s * 1000:.1f} ms"
    )
    buf.close()


def bench_drain(path: Path, synchronous: Synchronous) -> None:
    buf = Buffer(path, 8 * 1024**3, "drop_oldest", synchronous=synchronous)
    buf.open()
    buf.register_sinks(["influx"])
    total = buf.stats().depth_lines
    drained = batches = 0
    start = time.perf_counter()
    while (batch := buf.read("influx", BATCH)) is not None:
        drained += batch.lines
        batches += 1
        buf.ack("influx", batch.last_id)
    elapsed = time.perf_counter() - start
    assert drained == total and buf.stats().depth_lines == 0
    print(
        f"drain   synchronous={synchronous:<6} {drained / elapsed:>12,.0f} lines/s  "
        f"({drained:,} lines in {batches} read+ack batches, {elapsed:.2f} s)"
    )
    buf.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the test files")
    args = parser.parse_args()
    lines = make_lines(args.lines)
    avg = sum(map(len, lines)) / len(lines)
    print(f"{len(lines):,} lines of {avg:.0f} bytes on average, batches of {BATCH}")
    directory = Path(tempfile.mkdtemp(prefix="iotgw-bench-buffer-", dir=args.dir))
    try:
        full = bench_append(directory, lines, "full")
        normal = bench_append(directory, lines, "normal")
        bench_small_commits(directory, lines, "full")
        bench_small_commits(directory, lines, "normal")
        bench_open_and_stats(full)
        bench_drain(full, "full")
        bench_drain(normal, "normal")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
