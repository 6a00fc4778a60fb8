"""Cost of event streams: parsing speed, and a gateway holding many camera streams.

Run: ``.venv/bin/python bench/bench_event_stream.py [--hosts 50] [--seconds 20]
[--rate 1] [--parts 20000]``.

1. Parser: a Hikvision-like alertStream of ``--parts`` parts (70% XML camera alerts,
   20% JSON access events, 10% 170 kB JPEG pictures), framed with Content-Length and fed
   to the splitter in 64 KiB reads like a socket delivers them; every non-picture part is
   parsed. Prints MB/s and parts/s of one core.
2. Streams held: ``python -m gateway run`` (file sink) with ``--hosts`` Dahua devices,
   each a simulator (drivers/event_stream/sim.py) in this process sending a heartbeat
   every second and ``--rate`` events a second. After a 5 s warm-up the gateway's CPU
   (utime + stime of all its threads) and RSS are sampled for ``--seconds``; the events
   committed are counted from the file sink and the reconnects from the simulators.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.event_stream.events import PARSERS  # noqa: E402
from drivers.event_stream.multipart import MultipartSplitter, Part  # noqa: E402
from drivers.event_stream.sim import JPEG, DahuaSim, HikvisionSim, part  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_parser(parts: int) -> None:
    sim = HikvisionSim()
    alert = sim.alert("VMD")
    access = sim.access_part(sim.swipe("0004123456", "1001", on_stream=False))
    picture = part(JPEG * (170_000 // len(JPEG)), "image/jpeg", "boundary")
    stream = b"".join(picture if k % 10 == 9 else access if k % 10 >= 7 else alert
                      for k in range(parts))
    parse = PARSERS["hikvision"]
    splitter = MultipartSplitter("boundary", max_part=1024 * 1024)
    started = time.process_time()
    parsing = 0.0
    events = 0
    got = 0
    for at in range(0, len(stream), 65536):
        for item in splitter.feed(stream[at:at + 65536]):
            if isinstance(item, Part):
                got += 1
                if not item.content_type.startswith("image/"):
                    t0 = time.process_time()
                    events += len(parse(item))
                    parsing += time.process_time() - t0
    spent = time.process_time() - started
    assert got == parts, (got, parts)
    print(f"parser: {parts} parts, {len(stream) / 1e6:.1f} MB in {spent:.2f} s CPU: "
          f"{len(stream) / 1e6 / spent:.0f} MB/s split, {parts / spent:,.0f} parts/s; "
          f"{events / parsing:,.0f} events/s parsed (XML/JSON parsing alone, "
          f"{parsing:.2f} s)")


async def bench_streams(hosts: int, seconds: float, rate: float) -> None:
    sims = [DahuaSim() for _ in range(hosts)]
    for sim in sims:
        await sim.start()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gw.yaml"
        devices = "".join(
            f"  - {{id: cam-{i}, driver: event_stream, profile: dahua, host: 127.0.0.1, "
            f"port: {sim.port}, username: admin, password: dahua-pass, heartbeat: 1}}\n"
            for i, sim in enumerate(sims))
        config.write_text(textwrap.dedent("""\
            gateway: {id: gw-bench, site: bench, data_dir: data}
            sinks: [{type: file}]
            devices:
            """) + devices)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", str(config), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            for _ in range(600):  # at most a minute for every stream to open
                if sum(s.open_streams for s in sims) >= hosts:
                    break
                await asyncio.sleep(0.1)
            sent = 0

            async def events(until: float) -> None:
                nonlocal sent
                step = 1.0 / rate if rate > 0 else None
                while time.monotonic() < until:
                    if step is None:
                        await asyncio.sleep(0.5)
                        continue
                    for sim in sims:
                        sim.event("VideoMotion", "Start" if sent % 2 == 0 else "Stop", 0)
                    sent += 1
                    await asyncio.sleep(step)

            await events(time.monotonic() + 5.0)  # warm-up
            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
            rss = []
            until = wall0 + seconds
            task = asyncio.create_task(events(until))
            while time.monotonic() < until:
                rss.append(rss_mib(proc.pid))
                await asyncio.sleep(1.0)
            await task
            cpu = cpu_seconds(proc.pid) - cpu0
            wall = time.monotonic() - wall0
            await asyncio.sleep(1.0)
        finally:
            proc.terminate()
            await proc.wait()
        lines = 0
        for path in (Path(tmp) / "data" / "lines").glob("*.lp"):
            lines += sum(1 for line in path.read_text().splitlines()
                         if line.startswith("camera_event,"))
    reconnects = sum(s.stream_connects - 1 for s in sims)
    heartbeats = sum(s.heartbeats for s in sims)
    for sim in sims:
        await sim.stop()
    print(json.dumps({"hosts": hosts, "seconds": round(wall, 1), "events_per_s_total":
                      round(hosts * rate, 1), "cpu_percent_of_one_core":
                      round(100 * cpu / wall, 2), "rss_mib_max": round(max(rss), 1),
                      "camera_events_committed": lines, "events_sent": sent * hosts,
                      "heartbeats_sent": heartbeats, "reconnects": reconnects}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1.0,
                        help="events per second per host (0: heartbeats only)")
    parser.add_argument("--parts", type=int, default=20000)
    args = parser.parse_args()
    bench_parser(args.parts)
    asyncio.run(bench_streams(args.hosts, args.seconds, args.rate))


if __name__ == "__main__":
    main()
