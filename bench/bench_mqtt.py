"""MQTT events -> gateway -> VictoriaMetrics: sustained messages/s and publish-to-ack latency.

Run: ``.venv/bin/python bench/bench_mqtt.py [--count 300000] [--rates 10000,20000,25000]
[--seconds 20]``.

Starts, on free loopback ports in a temp dir: a private mosquitto (``tests.support.servers.
Mosquitto``, password auth, no TLS, ``max_inflight_messages 10000``), a private
VictoriaMetrics, and between the gateway and VictoriaMetrics a small **ack probe**: an
aiohttp reverse proxy in this process that forwards every ``/api/v2/write`` to
VictoriaMetrics unchanged and, when VictoriaMetrics has answered 2xx, takes the
receive time and reads the timestamp of every ``bench_mqtt`` line of that batch. The
publisher stamps each message with ``time.time_ns()`` just before ``publish()`` and the
device maps that stamp as the reading time (``time: $.ts, time_format: ns``), so
``ack time - reading time`` is the latency **from publish to sink acknowledgement** of
every single message (broker, gateway decode, buffer commit with fsync, PUBACK, read by
the forwarder, HTTP write, VictoriaMetrics answer). The forwarder marks the batch sent in
the buffer right after that answer. Same clock: everything runs on this host.

Then ``iotgw run`` (``python -m gateway run``) with one mqtt device subscribed with QoS 1
(``bench/+cam/events``, JSON fields ``seq`` and ``v``, tag ``cam`` from the topic) and one
``influxdb`` sink pointing at the probe; buffer ``synchronous=full`` (the default) and
``flush_interval`` 50ms. With ``taskset`` and >= 2 CPUs the gateway is pinned alone on
CPU 1 and everything else (mosquitto, VictoriaMetrics, publisher, probe) on CPU 0, so
"one core" is enforced for the gateway.

Phases, each publishing from a separate process (a raw-socket MQTT 3.1.1 QoS 1 publisher,
below; the gateway's own connection is MQTT 5):

1. warm-up: 2,000 messages, until all are acknowledged by the sink;
2. **flood**: ``--count`` messages as fast as the publisher can; messages/s between the
   moments 10% and 90% of them were acknowledged by the sink, the overall count / (last
   ack - first publish), and sink acknowledgements per second of the run. The publisher's
   own rate is printed: if it is not clearly above the gateway's, it sets the figure.
3. **sustained**: for each of ``--rates``, that many messages/s for ``--seconds``: the
   rate delivered to the sink in the steady window (1 s after the first publish .. the
   last publish), p50 / p99 / max of ack - publish over every message, p99 of the last
   quarter (a queue building up shows as a growing tail) and how long after the last
   publish the last message reached the sink. A rate is *sustained* when the delivered
   rate equals the offered one and the latency stays flat.

The flood of phase 2 shows the intake ceiling: there the sink side is limited by CPU 0,
which the publisher (~75,000 messages/s), mosquitto and VictoriaMetrics saturate, so most
messages reach the sink after the flood (the per-second timeline shows it). Phase 3 is
the figure for "sustained messages/s".

Finally the probe counts distinct publish stamps acknowledged against messages published
(VictoriaMetrics itself keeps one sample per series and millisecond).
``--profile DIR`` attaches py-spy to the gateway during the throughput phase (from CPU 0)
and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_throughput import (  # noqa: E402
    Gateway,
    Profiler,
    can_pin,
    cpu_seconds,
    pin,
    proc_status,
    start_vm,
)

from tests.support.servers import Mosquitto, free_port  # noqa: E402

MEASUREMENT = b"bench_mqtt"
PUBLISHER = r"""
# A minimal MQTT 3.1.1 QoS 1 publisher on a raw socket: paho-mqtt's Python client tops out
# at a few thousand QoS 1 messages/s (its in-flight bookkeeping is O(in-flight) per PUBACK),
# which would measure the publisher, not the gateway.
import json, socket, struct, sys, threading, time
port, user, password, count, rate, start_seq = sys.argv[1:7]
count, rate, seq0 = int(count), float(rate), int(start_seq)

def rlen(n):
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)

def s16(b):
    return struct.pack("!H", len(b)) + b

cid, u, pw = f"bench-pub-{seq0}".encode(), user.encode(), password.encode()
var = s16(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + s16(cid) + s16(u) + s16(pw)
sock = socket.create_connection(("127.0.0.1", int(port)))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.sendall(b"" + rlen(len(var)) + var)
assert sock.recv(4)[3] == 0, "CONNACK refused"
acked = [0]

def reader():
    buf = b""
    while acked[0] < count:
        data = sock.recv(65536)
        if not data:
            return
        buf += data
        n = len(buf) // 4
        acked[0] += n  # PUBACK is 4 bytes: 0x40 0x02 id id
        buf = buf[n * 4:]

threading.Thread(target=reader, daemon=True).start()
t0 = time.monotonic()
ns = time.time_ns
chunk = []
for i in range(count):
    seq = seq0 + i
    topic = b"bench/cam%d/events" % (seq % 8)
    body = b'{"seq":%d,"ts":%d,"v":%d.5,"label":"car"}' % (seq, ns(), seq % 1000)
    var = s16(topic) + struct.pack("!H", i % 65535 + 1)
    chunk.append(b"\x32" + rlen(len(var) + len(body)) + var + body)
    if i % 50 == 49 or i == count - 1:
        sock.sendall(b"".join(chunk))
        chunk.clear()
        if rate:
            ahead = (i + 1) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
sent = time.monotonic() - t0
while acked[0] < count and time.monotonic() - t0 < sent + 120:
    time.sleep(0.005)
done = time.monotonic() - t0
print(json.dumps({"seconds": sent, "rate": count / sent, "puback": acked[0],
                  "puback_rate": count / done}), flush=True)
sock.sendall(b"\xe0\x00")
sock.close()
"""


class AckProbe:
    """Reverse proxy gateway -> VictoriaMetrics recording (ack_ns, reading_ns) per line."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.acks: list[tuple[int, int]] = []  # (ack time ns, reading time ns)
        self.lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="ack-probe")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AckProbe:
        self.thread.start()
        self._ready.wait(10)
        return self

    def count(self) -> int:
        return len(self.acks)

    def _run(self) -> None:
        import aiohttp
        from aiohttp import web

        async def main() -> None:
            session = aiohttp.ClientSession(auto_decompress=False)

            async def handle(request: web.Request) -> web.Response:
                body = await request.read()  # aiohttp has already un-gzipped it
                headers = {k: v for k, v in request.headers.items()
                           if k.lower() in ("content-type", "authorization")}
                async with session.request(request.method, self.target + request.path_qs,
                                           data=body, headers=headers) as resp:
                    answer = await resp.read()
                    status = resp.status
                now = time.time_ns()
                if request.path.endswith("/write") and 200 <= status < 300:
                    stamps = [(now, int(line.rsplit(b" ", 1)[1]))
                              for line in body.split(b"\n")
                              if line.startswith(MEASUREMENT)]
                    with self.lock:
                        self.acks.extend(stamps)
                return web.Response(status=status, body=answer)

            app = web.Application(client_max_size=256 * 1024**2)
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())


def write_config(path: Path, broker: Mosquitto, sink_url: str) -> None:
    path.write_text(
        "gateway: {id: gw-bench-mqtt, site: bench, data_dir: data}\n"
        "buffer: {flush_interval: 50ms, max_bytes: 2GiB}\n"
        f"sinks:\n  - {{type: influxdb, name: vm, url: '{sink_url}', bucket: b, token: t}}\n"
        "mqtt:\n"
        f"  {{host: 127.0.0.1, port: {broker.port}, username: gw, password: gw-secret,"
        " base_topic: bench/gw, client_id: bench-gw, stats_interval: 5s}\n"
        "devices:\n"
        "  - {id: cams, driver: mqtt, topic: 'bench/+cam/events', qos: 1,"
        " measurement: bench_mqtt, fields: {seq: $.seq, v: $.v},"
        " payload_tags: {label: $.label}, time: $.ts, time_format: ns}\n")


def publish(broker: Mosquitto, count: int, rate: float, seq0: int,
            cpu: int | None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-c", PUBLISHER, str(broker.port), "gw", "gw-secret", str(count),
           str(rate), str(seq0)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)


def wait_acked(probe: AckProbe, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while probe.count() < total:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {probe.count()} of {total} acknowledged by the sink")
        time.sleep(0.02)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def steady_report(acks: list[tuple[int, int]], publisher: dict[str, float]) -> str:
    """Did the gateway keep up with a constant offered rate? Delivered rate in the steady
    window (publish start + 1 s .. last publish), latency overall and for the last quarter
    of messages published (growing latency = a queue building up = not sustained), and
    how long after the last publish the last sink acknowledgement came."""
    by_publish = sorted(acks, key=lambda a: a[1])
    first_pub, last_pub = by_publish[0][1], by_publish[-1][1]
    window = (first_pub + 10**9, last_pub)
    delivered = sum(1 for a, _ in acks if window[0] <= a <= window[1])
    rate = delivered / max(1e-9, (window[1] - window[0]) / 1e9)
    lat = sorted((a - r) / 1e6 for a, r in acks)
    tail = sorted((a - r) / 1e6 for a, r in by_publish[len(by_publish) * 3 // 4:])
    drain = (max(a for a, _ in acks) - last_pub) / 1e6
    return (f"offered {publisher['rate']:,.0f} messages/s for {publisher['seconds']:.1f} s "
            f"({len(acks):,}): delivered {rate:,.0f}/s in the steady window; publish -> "
            f"sink ack p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms, max "
            f"{lat[-1]:.0f} ms; last quarter p99 {pct(tail, 99):.0f} ms; last ack "
            f"{drain:.0f} ms after last publish")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=300_000, help="throughput phase messages")
    ap.add_argument("--rates", default="10000,20000,25000",
                    type=lambda text: [float(r) for r in text.split(",")],
                    help="constant offered rates (messages/s), comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="duration of each rate")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy output dir")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    pinned = can_pin()
    gw_cpu, other_cpu = (1, 0) if pinned else (None, None)
    base = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
    broker = Mosquitto(base / "mosquitto", users={"gw": "gw-secret"}, tls=False,
                       max_queued_messages=2_000_000,
                       extra_config="max_inflight_messages 10000\n").start()
    vm = start_vm(base / "vm", other_cpu)
    if pinned:
        assert broker.pid is not None and other_cpu is not None
        pin(broker.pid, other_cpu)
        os.sched_setaffinity(0, {other_cpu})
    probe = AckProbe(vm.url).start()
    config = base / "gw.yaml"
    write_config(config, broker, probe.url)
    gw = Gateway(config, cpu=gw_cpu, log=base / "gateway.log")
    try:
        gw.wait_log("-dev connected")
        print(f"gateway pid {gw.pid} on CPU {gw_cpu}; broker, VictoriaMetrics, publisher "
              f"and probe on CPU {other_cpu}" if pinned else "not pinned (no taskset / 1 CPU)")

        # 1. warm-up
        pub = publish(broker, 2000, 0, 0, other_cpu)
        pub.communicate(timeout=120)
        wait_acked(probe, 2000, 60)

        # 2. throughput
        seq0, n = 1_000_000, args.count
        before = probe.count()
        cpu0 = cpu_seconds(gw.pid)
        t_start = time.time_ns()
        profiler = Profiler(gw.pid, args.profile, max(3.0, n / 40_000), other_cpu) \
            if args.profile else None
        pub = publish(broker, n, 0, seq0, other_cpu)
        out, _ = pub.communicate(timeout=600)
        publisher = json.loads(out)
        wait_acked(probe, before + n, 600)
        cpu_used = cpu_seconds(gw.pid) - cpu0
        with probe.lock:
            acks = sorted(a for a, _ in probe.acks[before:before + n])
        t10, t90 = acks[n // 10], acks[n * 9 // 10]
        sustained = (n * 8 // 10) / ((t90 - t10) / 1e9)
        overall = n / ((acks[-1] - t_start) / 1e9)
        wall = (acks[-1] - t_start) / 1e9
        print(f"flood: {n:,} QoS 1 messages; publisher offered {publisher['rate']:,.0f}/s"
              f" ({publisher['seconds']:.1f} s), broker PUBACKs at "
              f"{publisher['puback_rate']:,.0f}/s")
        print(f"  10%..90% of sink acks: {sustained:,.0f} messages/s")
        print(f"  overall (first publish .. last sink ack): {overall:,.0f} messages/s "
              f"over {wall:.1f} s")
        print(f"  gateway CPU {cpu_used:.1f} s = {100 * cpu_used / wall:.0f}% of one core; "
              f"RSS {proc_status(gw.pid).get('VmRSS', 0) / 1024**2:.0f} MiB "
              f"(anonymous {proc_status(gw.pid).get('RssAnon', 0) / 1024**2:.0f} MiB, "
              f"peak {proc_status(gw.pid).get('VmHWM', 0) / 1024**2:.0f} MiB)")
        per_second = [0] * (int(wall) + 1)
        for ack in acks:
            per_second[int((ack - t_start) / 1e9)] += 1
        print("  sink acks per second of the run (thousands): "
              + " ".join(f"{c / 1000:.1f}" for c in per_second))
        if profiler is not None:
            print(profiler.report())

        # 3. sustained: constant offered rates, each for --seconds
        seq1, m = 5_000_000, 0
        for rate in args.rates:
            count = int(rate * args.seconds)
            before = probe.count()
            cpu0, wall0 = cpu_seconds(gw.pid), time.monotonic()
            pub = publish(broker, count, rate, seq1 + m, other_cpu)
            out, _ = pub.communicate(timeout=args.seconds * 10 + 120)
            publisher = json.loads(out)
            wait_acked(probe, before + count, 300)
            busy = (cpu_seconds(gw.pid) - cpu0) / (time.monotonic() - wall0)
            m += count
            with probe.lock:
                batch = list(probe.acks[before:before + count])
            print(f"{steady_report(batch, publisher)}; gateway at {100 * busy:.0f}% of "
                  "one core")

        # completeness: VictoriaMetrics keeps one sample per series and millisecond
        # (-dedup.minScrapeInterval=1ms, and 8 series here), so count at the probe: every
        # publish stamp (time_ns, unique per message) acknowledged by the sink.
        expected = 2000 + n + m
        with probe.lock:
            lines, stamps = len(probe.acks), len({r for _, r in probe.acks})
        print(f"sink acknowledged {lines:,} lines, {stamps:,} distinct publish stamps, "
              f"of {expected:,} published")
    finally:
        code = gw.stop()
        print(f"gateway exit {code}")
        vm.stop()
        broker.stop()
        if not args.keep:
            import shutil
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


if __name__ == "__main__":
    main()
