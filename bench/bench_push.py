"""Push receiver: push-to-committed latency with 10 ANPR cameras posting 200 kB
multiparts in parallel, and the gateway's RSS meanwhile.

Run: ``.venv/bin/python bench/bench_push.py [--devices 10] [--seconds 20]
[--picture-bytes 100000]``.

Starts ``iotgw run`` (``python -m gateway run``) in a temp dir with one file sink,
``buffer.synchronous=full`` (fsync per commit, the default), ``flush_interval`` 50ms, and
``--devices`` hikvision-isapi devices on one push receiver. Then, from this process, each
simulated ANPR camera (``drivers/camera_push/sim.py``: ``anpr.xml`` plus two pictures,
about ``2 x --picture-bytes`` per post, new UUID each time) posts in a closed loop:
post, wait for the answer, post the next. The receiver answers only after the event is
committed to the buffer, so the time from starting to send a post to reading its answer
is **push-to-committed** (connect, upload, multipart split, XML parse, commit with fsync,
answer). With ``taskset`` and >= 2 CPUs the gateway is pinned to CPU 1 and the cameras
to CPU 0. The gateway's RSS is sampled every 100 ms from ``/proc/<pid>/status``.

Prints p50 / p95 / p99 / max latency, posts/s, MB/s uploaded, RSS before / mean / peak,
and the stored line count against the posts answered 200 (every answered post must be
in the sink; none twice). Target (issue 13): p95 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_throughput import mib, proc_status  # noqa: E402

from drivers.camera_push import sim  # noqa: E402
from tests.support.servers import free_port  # noqa: E402


def write_config(folder: Path, port: int, devices: int) -> Path:
    lines = ["gateway: {id: gw-bench-push, site: bench, data_dir: data}",
             "buffer: {flush_interval: 50ms}",
             "sinks: [{type: file, name: local}]",
             "health: {enabled: false}",
             f"http: {{listen: '127.0.0.1:{port}', max_body: 4MiB}}",
             "devices:"]
    lines += [f"  - {{id: anpr-{n}, driver: camera_push, profile: hikvision-isapi, "
              f"token: tok-{n}}}" for n in range(devices)]
    path = folder / "gw.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() and \
        os.cpu_count() >= 2 else []  # type: ignore[operator]


async def camera(port: int, n: int, until: float, picture_bytes: int,
                 latencies: list[float], statuses: dict[int, int], run: str = "") -> None:
    seq = 0
    terminal = sim.HikvisionTerminal(port, f"anpr-{n}", f"tok-{n}")
    while time.monotonic() < until:
        seq += 1
        body, content_type = sim.anpr_multipart(f"粤B{n:02d}{seq:03d}"[:8], uuid=f"{run}{n}-{seq}",
                                                picture_bytes=picture_bytes)
        start = time.perf_counter()
        reply = await terminal.push(body, content_type)
        latencies.append(time.perf_counter() - start)
        statuses[reply.status] = statuses.get(reply.status, 0) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--picture-bytes", type=int, default=100_000,
                        help="bytes per picture (two per post)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        folder = Path(tmp)
        port = free_port()
        config = write_config(folder, port, args.devices)
        proc = subprocess.Popen([*pinned(1), sys.executable, "-m", "gateway", "run",
                                 str(config)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            if pinned(0):
                os.sched_setaffinity(0, {0})
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    import socket

                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            body, _ = sim.anpr_multipart("warm", uuid="w", picture_bytes=args.picture_bytes)
            print(f"{args.devices} cameras, {len(body) / 1000:.0f} kB per post, "
                  f"{args.seconds:g} s closed loop")
            asyncio.run(camera(port, 0, time.monotonic() + 1.0, args.picture_bytes, [], {},
                               "warm-"))
            rss_before = proc_status(proc.pid)["VmRSS"]
            samples: list[int] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.1):
                    samples.append(proc_status(proc.pid)["VmRSS"])

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            latencies: list[float] = []
            statuses: dict[int, int] = {}
            until = time.monotonic() + args.seconds

            async def fleet() -> None:
                await asyncio.gather(*(camera(port, n, until, args.picture_bytes, latencies,
                                              statuses) for n in range(args.devices)))

            started = time.monotonic()
            asyncio.run(fleet())
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            peak = proc_status(proc.pid)["VmHWM"]
            time.sleep(1.0)  # the file sink's forwarder catches up
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        lines = 0
        for path in (folder / "data" / "lines").glob("*.lp"):
            lines += sum(1 for line in path.read_bytes().split(b"\n") if line)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    posts = len(latencies)
    print(f"posts answered           {posts} ({statuses}), {posts / elapsed:.1f} posts/s, "
          f"{posts * len(body) / elapsed / 1e6:.1f} MB/s uploaded")
    print(f"push-to-committed        p50 {pct(0.5):.0f} ms, p95 {pct(0.95):.0f} ms, "
          f"p99 {pct(0.99):.0f} ms, max {latencies[-1] * 1000:.0f} ms, mean "
          f"{statistics.fmean(latencies) * 1000:.0f} ms (target: p95 < 1000 ms)")
    print(f"gateway RSS              before {mib(rss_before)}, during: mean "
          f"{mib(statistics.fmean(samples))}, max sampled {mib(max(samples))}, "
          f"VmHWM {mib(peak)}")
    print(f"stored lines             {lines} for {statuses.get(200, 0)} posts answered 200 "
          "in the window plus the warm-up's")


if __name__ == "__main__":
    main()
