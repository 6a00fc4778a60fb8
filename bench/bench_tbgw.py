"""iotgw and ThingsBoard IoT Gateway side by side on issue 11's Modbus workload.

Run: ``.venv/bin/python bench/bench_tbgw.py [--repeat 3] [--warmup 10] [--seconds 30]
[--sink file|vm|both] [--setup]``.

Workload (issue 11, as ``bench_footprint.py``'s default): ``--devices`` (100) Eastron
SDM630 meters behind ONE Modbus TCP endpoint (unit ids 1..N, a real pymodbus server in a
child process: ``bench_footprint.serve_meters``), 5 float32 points each (voltage_l1,
current_l1, power_total, frequency, energy_import at the addresses and word order of the
shipped ``eastron-sdm630`` profile), polled every second, default settings otherwise.

* **TB-GW**: ``thingsboard-gateway`` (``--tbgw-version``, 3.8.5) from PyPI in a venv of
  its own, ``bench/.venv-tbgw/`` (not in git), created on first use or with ``--setup``;
  pymodbus at the version its Modbus connector pins (read from the installed connector:
  the connector would otherwise pip-install it itself at start-up) and pyserial /
  pyserial-asyncio, which the connector imports. Its shipped config directory is copied
  and only ``thingsboard`` host/port/access token and the connector list are changed in
  ``tb_gateway.json``; the Modbus connector has one slave per meter with the 5 points as
  ``timeseries`` (``32float``, function code 4, big-endian bytes and words) and
  ``pollPeriod`` 1000. Everything else is TB-GW's default: memory storage, statistics
  on, remote configuration on, its logging config (INFO to files and stdout). It talks
  MQTT to a private mosquitto on a free loopback port that takes the access token as
  user name; the bench subscribes to every topic and counts what TB-GW publishes
  (``v1/gateway/telemetry``: one reading = one device's timestamped values) and checks
  the values against the simulator's. Its update check (an HTTPS POST to ThingsBoard's
  update service at start and every hour, no setting turns it off) is sent to a closed
  loopback port through ``HTTPS_PROXY``; the bench lists the peers of its TCP sockets to
  show nothing else leaves the machine.
* **iotgw**: ``python -m gateway run`` with ``bench_footprint.write_modbus_config``'s
  config, the deploy unit's environment, gateway/ and drivers/ compiled first (as
  bench_footprint.py), into the default file sink or (``--sink vm``) an ``influxdb`` sink
  to a private VictoriaMetrics.

Each gateway runs alone, pinned to CPU 1 (the simulator, broker, VictoriaMetrics and this
script on CPU 0), in turns (TB-GW, iotgw, TB-GW, iotgw ... with ``--repeat``), each with
the same warm-up after its first delivered reading and the same window. Per run: VmRSS
max (sampled each second), CPU % of one core (utime + stime of all threads, from
/proc/PID/stat; children's CPU, e.g. TB-GW's statistics commands, separately), requests
the simulator served during the window, CPU ms per request, readings delivered
(iotgw: acknowledged by its sink; TB-GW: received from the broker).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_footprint import SDM630_FIVE, deploy_env, serve_meters, write_modbus_config
from bench_throughput import (
    ROOT,
    ChildProcess,
    Gateway,
    Profiler,
    can_pin,
    cpu_seconds,
    cpu_share,
    cpu_ticks,
    proc_status,
    start_vm,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.buffer import read_stats
from tests.support.servers import LOOPBACK, Mosquitto, free_port

MB = 1024**2
TBGW_VERSION = "3.8.5"
VENV = ROOT / "bench" / ".venv-tbgw"
STAMP = VENV / "bench-installed.json"
TOKEN = "bench-gateway-token"
TELEMETRY_TOPIC = "v1/gateway/telemetry"
CPU_TARGET_RATIO = 1 / 6
"""Issue 11: iotgw at most 1/6 of TB-GW's CPU on this workload, default settings."""


# -- TB-GW's venv -------------------------------------------------------------------------


def _pip(python: Path, *args: str) -> None:
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pip install {' '.join(args)} failed (exit {proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def tbgw_site(venv: Path = VENV) -> Path:
    """The installed thingsboard_gateway package directory."""
    found = sorted(venv.glob("lib/python*/site-packages/thingsboard_gateway"))
    if not found:
        raise SystemExit(f"thingsboard_gateway not installed in {venv}")
    return found[0]


def pinned_pymodbus(site: Path) -> str:
    """The pymodbus version TB-GW's Modbus connector insists on (it pip-installs that
    version at import time when another one is found)."""
    source = (site / "connectors" / "modbus" / "modbus_connector.py").read_text()
    match = re.search(r"required_version\s*=\s*['\"]([\w.]+)['\"]", source)
    if match is None:
        raise SystemExit("cannot find the pymodbus version TB-GW's Modbus connector pins")
    return match.group(1)


def ensure_tbgw(version: str, force: bool) -> dict[str, str]:
    """Create or reuse ``bench/.venv-tbgw`` with TB-GW ``version``; the installed
    versions of what matters (so a run records what it measured)."""
    python = VENV / "bin" / "python"
    if not force and STAMP.exists():
        stamp: dict[str, str] = json.loads(STAMP.read_text())
        if stamp.get("thingsboard-gateway") == version and python.exists():
            return stamp
    print(f"setting up {VENV.relative_to(ROOT)}: thingsboard-gateway=={version} ...",
          flush=True)
    if force and VENV.exists():
        shutil.rmtree(VENV)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    _pip(python, f"thingsboard-gateway=={version}")
    modbus = pinned_pymodbus(tbgw_site())
    _pip(python, f"pymodbus=={modbus}", "pyserial", "pyserial-asyncio")
    query = ("import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) "
             "for n in ('thingsboard-gateway', 'tb-mqtt-client', 'tb-paho-mqtt-client', "
             "'pymodbus')} | {'python': sys.version.split()[0]}))")
    stamp = json.loads(subprocess.run([str(python), "-c", query], check=True,
                                      capture_output=True, text=True).stdout)
    STAMP.write_text(json.dumps(stamp))
    return stamp


# -- TB-GW's configuration ---------------------------------------------------------------


def profile_points() -> list[tuple[str, int, float]]:
    """(name, input register address, value the simulator serves) of the five points;
    ``serve_meters`` stores ``index + 0.5`` in each profile point."""
    from drivers.modbus.profiles import load_profile

    profile = load_profile("eastron-sdm630")
    out = []
    for i, point in enumerate(profile.points):
        if point.name in SDM630_FIVE:
            assert point.table == "input" and point.type == "float32" and point.order == "ABCD"
            out.append((point.name, point.address, float(i) + 0.5))
    return out


def write_tbgw_config(config_dir: Path, *, mqtt_port: int, sim_port: int, devices: int,
                      poll_ms: int) -> None:
    """TB-GW's shipped config directory with the broker and the Modbus connector set."""
    shutil.copytree(tbgw_site() / "config", config_dir)
    # State, not configuration: the shipped demo's device list (it would only warn).
    (config_dir / "connected_devices.json").unlink(missing_ok=True)
    main_file = config_dir / "tb_gateway.json"
    main = json.loads(main_file.read_text())
    main["thingsboard"]["host"] = LOOPBACK
    main["thingsboard"]["port"] = mqtt_port
    main["thingsboard"]["security"] = {"type": "accessToken", "accessToken": TOKEN}
    main["connectors"] = [{"type": "modbus", "name": "Modbus Connector",
                           "configuration": "modbus-sdm630.json"}]
    main_file.write_text(json.dumps(main, indent=2))
    # Only what differs from the connector's code defaults (timeout, retries, reconnect
    # timing ...); ABCD = big-endian bytes and words (the connector defaults to LITTLE).
    timeseries = [{"tag": name, "type": "32float", "functionCode": 4, "objectsCount": 2,
                   "address": address} for name, address, _ in profile_points()]
    slaves = [{"host": LOOPBACK, "port": sim_port, "type": "tcp", "method": "socket",
               "unitId": u, "deviceName": f"m{u:03d}", "deviceType": "eastron-sdm630",
               "byteOrder": "BIG", "wordOrder": "BIG", "pollPeriod": poll_ms,
               "attributes": [], "timeseries": timeseries, "attributeUpdates": [], "rpc": []}
              for u in range(1, devices + 1)]
    (config_dir / "modbus-sdm630.json").write_text(
        json.dumps({"master": {"slaves": slaves}}, indent=2))


# -- the broker and what TB-GW publishes --------------------------------------------------


PLATFORM_USER = "bench-platform"
PLATFORM_ACL = f"""\
user {TOKEN}
topic write v1/#
topic read v1/devices/me/attributes/response/#
topic read v1/devices/me/rpc/response/#
topic read v1/gateway/attributes/response

user {PLATFORM_USER}
topic readwrite #
"""
"""ThingsBoard's topics carry some messages one way and others back on the same name
(``v1/devices/me/attributes``: client attributes up, shared ones down; ``.../rpc/request``:
the gateway's own RPCs up, the platform's down). A plain broker would echo TB-GW's
uploads back to it as if the platform had sent them (it then parses its own attributes
as remote configuration, and fails). So TB-GW may publish anywhere under ``v1/`` but
read only the response topics; the bench's platform stand-in reads and writes all."""


class TokenMosquitto(Mosquitto):
    """The test harness's mosquitto, accepting any user name without a password, as
    ThingsBoard's MQTT transport accepts a device's access token, with
    :data:`PLATFORM_ACL`."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir, users={}, acl=PLATFORM_ACL, tls=False, allow_anonymous=True)

    def _prepare(self) -> None:
        super()._prepare()
        lines = self.config_path.read_text().splitlines()
        self.config_path.write_text(
            "\n".join(x for x in lines if not x.startswith("password_file")) + "\n")


@dataclass
class Published:
    """What arrived at the broker, counted by a subscriber to ``#``."""

    messages: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    readings: int = 0
    """Telemetry entries: one device's values at one timestamp."""
    values: int = 0
    wrong: dict[str, Any] = field(default_factory=dict)
    """A value that differs from the simulator's, per key (empty: all matched)."""
    devices: set[str] = field(default_factory=set)


SESSION_LIMITS = {"maxPayloadSize": 65536, "maxInflightMessages": 100,
                  "rateLimits": {"messages": "", "telemetryMessages": "",
                                 "telemetryDataPoints": ""},
                  "gatewayRateLimits": {"messages": "", "telemetryMessages": "",
                                        "telemetryDataPoints": ""}}
"""The answer to TB-GW's ``getSessionLimits`` RPC: no rate limits (what ThingsBoard
says when the tenant profile sets none), 64 KiB payloads (its MQTT transport's default
``max_payload_size``). TB-GW sends nothing until this RPC is answered."""
_RPC_REQUEST = re.compile(r"v1/devices/me/(rpc|attributes)/request/(\d+)$")


class Subscriber:
    """The platform's side of TB-GW's MQTT session, in its own thread (on this script's
    CPU): a paho client on ``#`` that counts and checks what TB-GW publishes and answers
    the two requests ThingsBoard would (session limits; the gateway's own attributes,
    with none set)."""

    def __init__(self, port: int, expected: dict[str, float]) -> None:
        import paho.mqtt.client as mqtt

        self.expected = expected
        self.lock = threading.Lock()
        self.seen = Published()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sub")
        self.client.username_pw_set(PLATFORM_USER)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bench subscriber did not subscribe")

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        with self.lock:
            seen = self.seen
            seen.messages[msg.topic] = seen.messages.get(msg.topic, 0) + 1
            seen.bytes[msg.topic] = seen.bytes.get(msg.topic, 0) + len(msg.payload)
            if msg.topic != TELEMETRY_TOPIC:
                self._answer(msg.topic, msg.payload)
                return
            for device, entries in json.loads(msg.payload).items():
                seen.devices.add(device)
                for entry in entries if isinstance(entries, list) else [entries]:
                    values = entry.get("values", entry)
                    seen.readings += 1
                    seen.values += len(values)
                    for key, value in values.items():
                        if key in self.expected and value != self.expected[key]:
                            seen.wrong[key] = value

    def _answer(self, topic: str, payload: bytes) -> None:
        request = _RPC_REQUEST.match(topic)
        if request is None:
            return
        kind, number = request.groups()
        if kind == "rpc" and json.loads(payload).get("method") == "getSessionLimits":
            self.client.publish(f"v1/devices/me/rpc/response/{number}",
                                json.dumps(SESSION_LIMITS), qos=1)
        elif kind == "attributes":
            self.client.publish(f"v1/devices/me/attributes/response/{number}", "{}", qos=1)

    def snapshot(self) -> Published:
        with self.lock:
            s = self.seen
            return Published(dict(s.messages), dict(s.bytes), s.readings, s.values,
                             dict(s.wrong), set(s.devices))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- running TB-GW -------------------------------------------------------------------------


class TbGateway(ChildProcess):
    """``thingsboard-gateway`` (its console script, as the package's service runs it) as a
    child process in ``workdir`` (its ./logs), optionally pinned."""

    stop_signal = signal.SIGINT
    """What TB-GW handles to stop cleanly."""

    def __init__(self, config_dir: Path, workdir: Path, *, cpu: int | None,
                 blackhole_port: int) -> None:
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        proxy = f"http://{LOOPBACK}:{blackhole_port}"
        env = {**os.environ, "TB_GW_CONFIG_DIR": str(config_dir),
               # Its update check: refused at once on loopback instead of reaching out.
               "HTTPS_PROXY": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy,
               "http_proxy": proxy, "NO_PROXY": f"{LOOPBACK},localhost",
               "no_proxy": f"{LOOPBACK},localhost"}
        super().__init__([str(VENV / "bin" / "thingsboard-gateway")], cwd=workdir, cpu=cpu,
                         log=workdir / "stdout.log", env=env)

    def stop(self, timeout: float = 20.0) -> int:
        return super().stop(timeout)


def socket_peers(pid: int) -> set[str]:
    """Remote addresses of the TCP sockets ``pid`` holds (listening ones excluded)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    peers = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[9] not in inodes or cols[3] == "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(cols[2].split(":")[0])
            # /proc prints the address as native-endian 32-bit words.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            peers.add(socket.inet_ntop(family, words))
    return peers


def children_cpu(pid: int) -> float:
    """cutime + cstime: CPU of children ``pid`` has waited for (TB-GW's statistics
    commands run as child processes), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


# -- one measured run ----------------------------------------------------------------------


@dataclass
class Run:
    name: str
    repeat: int
    window: float = 0.0
    rss_max: int = 0
    rss_anon: int = 0
    rss_file: int = 0
    threads: int = 0
    cpu: float = 0.0
    """% of one core, utime + stime of all threads."""
    child_cpu: float = 0.0
    requests: float = 0.0
    """Requests per second the simulator served."""
    readings: float = 0.0
    """Device readings (5 values each) delivered per second."""
    values: float = 0.0
    sim_cpu: float = 0.0
    shared: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ms_per_request(self) -> float:
        return 10 * self.cpu / self.requests if self.requests else float("nan")


@dataclass
class Env:
    """What every run shares."""

    base: Path
    devices: int
    poll_ms: int
    warmup: float
    seconds: float
    gw_cpu: int | None
    sim_port: int
    sim_pid: int
    requests: Any
    """The simulator's shared request counter."""
    mqtt: TokenMosquitto
    blackhole_port: int
    vm: Any = None
    side_cpu: int | None = None
    profile: float = 0.0
    """Seconds of py-spy after each window (0: none)."""


def profile(run: Run, env: Env, pid: int, work: Path) -> None:
    """py-spy from the other CPU, after the window (so it cannot disturb the figures)."""
    if env.profile > 0:
        report = Profiler(pid, work / "profile", env.profile, env.side_cpu).report(top=20)
        run.notes.append(report.replace("\n", "\n    "))


def settle(requests: Any, quiet: float = 0.1, longest: float = 1.2) -> None:
    """Return in a pause of the simulator's requests (none for ``quiet`` seconds), or
    after ``longest``. TB-GW polls all meters at once, a burst of 500 requests in
    ~0.3 s each second: a window starting or ending inside one would count a fraction
    of a cycle too many or too few (+2% in 30 s, seen before this). iotgw spreads its
    polls, so there is no pause and the window is as timed."""
    deadline = time.monotonic() + longest
    last, since = requests.value, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        now, value = time.monotonic(), requests.value
        if value != last:
            last, since = value, now
        elif now - since >= quiet:
            return


def measure(run: Run, env: Env, pid: int, delivered: Callable[[], tuple[int, int]],
            alive: Callable[[], bool], peers: set[str] | None = None) -> None:
    """Sample ``pid`` over the window; ``delivered()`` -> (readings, values) so far."""
    settle(env.requests)
    ticks0 = cpu_ticks(env.gw_cpu)
    t0, cpu0, child0 = time.monotonic(), cpu_seconds(pid), children_cpu(pid)
    sim0, req0 = cpu_seconds(env.sim_pid), env.requests.value
    readings0, values0 = delivered()
    rss: list[int] = []
    while time.monotonic() - t0 < env.seconds:
        time.sleep(1.0)
        if not alive():
            raise RuntimeError(f"{run.name} died during the window")
        rss.append(proc_status(pid)["VmRSS"])
        if peers is not None:
            peers |= socket_peers(pid)
    settle(env.requests)
    t1, cpu1, child1 = time.monotonic(), cpu_seconds(pid), children_cpu(pid)
    sim1, req1 = cpu_seconds(env.sim_pid), env.requests.value
    readings1, values1 = delivered()
    ticks1 = cpu_ticks(env.gw_cpu)
    status = proc_status(pid)
    dt = t1 - t0
    run.window = dt
    run.rss_max = max(rss)
    run.rss_anon, run.rss_file, run.threads = (status["RssAnon"], status["RssFile"],
                                               status["Threads"])
    run.cpu = 100 * (cpu1 - cpu0) / dt
    run.child_cpu = 100 * (child1 - child0) / dt
    run.sim_cpu = 100 * (sim1 - sim0) / dt
    run.requests = (req1 - req0) / dt
    run.readings = (readings1 - readings0) / dt
    run.values = (values1 - values0) / dt
    run.shared = cpu_share(env.gw_cpu, ticks0, ticks1, run.cpu)


def run_tbgw(env: Env, repeat: int) -> Run:
    run = Run("TB-GW", repeat)
    work = env.base / f"tbgw-{repeat}"
    write_tbgw_config(work / "config", mqtt_port=env.mqtt.port, sim_port=env.sim_port,
                      devices=env.devices, poll_ms=env.poll_ms)
    sub = Subscriber(env.mqtt.port, {name: value for name, _, value in profile_points()})
    gw = TbGateway(work / "config", work, cpu=env.gw_cpu, blackhole_port=env.blackhole_port)
    try:
        deadline = time.monotonic() + 120
        while sub.snapshot().readings == 0:
            if not gw.alive():
                raise RuntimeError(f"TB-GW exited: {gw.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"TB-GW published no telemetry in 120 s: {gw.tail()}")
            time.sleep(0.1)
        time.sleep(env.warmup)

        snapshots: list[Published] = []

        def delivered() -> tuple[int, int]:
            snapshots.append(sub.snapshot())
            return snapshots[-1].readings, snapshots[-1].values

        peers: set[str] = set()
        measure(run, env, gw.pid, delivered, gw.alive, peers)
        before, after = snapshots[0], snapshots[-1]
        profile(run, env, gw.pid, work)
        other = {t: after.messages[t] - before.messages.get(t, 0) for t in after.messages
                 if t != TELEMETRY_TOPIC and after.messages[t] > before.messages.get(t, 0)}
        tele = after.messages.get(TELEMETRY_TOPIC, 0) - before.messages.get(TELEMETRY_TOPIC, 0)
        tele_bytes = after.bytes.get(TELEMETRY_TOPIC, 0) - before.bytes.get(TELEMETRY_TOPIC, 0)
        run.notes.append(f"MQTT: {tele / run.window:.1f} telemetry messages/s "
                         f"({tele_bytes / max(tele, 1):.0f} B each, "
                         f"{(after.readings - before.readings) / max(tele, 1):.1f} readings "
                         f"per message); {len(after.devices)} devices seen")
        if other:
            run.notes.append("other topics in the window: " + ", ".join(
                f"{t} {n}" for t, n in sorted(other.items())))
        run.notes.append("values match the simulator" if not after.wrong else
                         f"VALUES DIFFER from the simulator: {after.wrong}")
        outside = {p for p in peers if p not in (LOOPBACK, "::1", "::ffff:127.0.0.1")}
        run.notes.append(f"TCP peers: {', '.join(sorted(peers)) or 'none'}"
                         + (f" - NOT LOOPBACK: {outside}" if outside else " (loopback only)"))
        return run
    finally:
        code = gw.stop()
        sub.stop()
        if code not in (0, -signal.SIGINT):
            run.notes.append(f"exit code {code}")
        # Errors while it ran; at SIGINT it logs "Cancel send, because not connected!".
        log = gw.log_path.read_text(errors="replace").partition("- Stopping...")[0]
        errors = [x for x in log.splitlines() if "|ERROR|" in x or "Traceback" in x]
        if errors:
            run.notes.append(f"{len(errors)} ERROR lines in its log, first: {errors[0][:200]}")


def run_iotgw(env: Env, repeat: int, sink: str) -> Run:
    run = Run("iotgw" if sink == "file" else "iotgw vm", repeat)
    work = env.base / f"iotgw-{sink}-{repeat}"
    work.mkdir()
    config = work / "gw.yaml"
    write_modbus_config(config, sink_url=env.vm.url if sink == "vm" else None,
                        devices=env.devices, port=env.sim_port,
                        interval=f"{env.poll_ms / 1000:g}s")
    buffer = work / "data" / "buffer.db"
    gw = Gateway(config, cpu=env.gw_cpu, log=work / "gateway.log", env=deploy_env())
    try:
        gw.wait_log("running:")
        deadline = time.monotonic() + 60
        while not buffer.exists() or read_stats(buffer).committed_total == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"iotgw committed nothing in 60 s: {gw.tail()}")
            time.sleep(0.1)
        time.sleep(env.warmup)

        def delivered() -> tuple[int, int]:
            stats = read_stats(buffer)
            lag = max((s.lag_lines for s in stats.sinks.values()), default=0)
            return stats.committed_total - lag, 5 * (stats.committed_total - lag)

        measure(run, env, gw.pid, delivered, gw.alive)
        profile(run, env, gw.pid, work)
        return run
    finally:
        code = gw.stop()
        if code != 0:
            run.notes.append(f"exit code {code}: {gw.tail(5)}")


# -- report ---------------------------------------------------------------------------------


def span(values: list[float], fmt: str) -> str:
    """``lo-hi`` of ``values``, or one figure when they print the same."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def print_run(run: Run) -> None:
    print(f"[{run.repeat}] {run.name:8} RSS max {run.rss_max / MB:5.1f} MiB (anon "
          f"{run.rss_anon / MB:.1f}, file {run.rss_file / MB:.1f}, {run.threads} threads)  "
          f"CPU {run.cpu:5.2f}% (+children {run.child_cpu:.2f}%)  "
          f"{run.requests:6.1f} req/s  {run.ms_per_request:.3f} ms/req  "
          f"{run.readings:6.1f} readings/s ({run.values:.0f} values/s)  "
          f"simulator {run.sim_cpu:.1f}%", flush=True)
    if run.shared:
        print(f"    shared CPU: {run.shared}")
    for note in run.notes:
        print(f"    {note}")


def summary(runs: list[Run], offered: float) -> None:
    names = list(dict.fromkeys(r.name for r in runs))
    by = {n: [r for r in runs if r.name == n] for n in names}
    rows: list[tuple[str, Callable[[list[Run]], str]]] = [
        ("RSS max (MiB)", lambda rs: span([r.rss_max / MB for r in rs], "{:.1f}")),
        ("RssAnon (MiB)", lambda rs: span([r.rss_anon / MB for r in rs], "{:.1f}")),
        ("threads", lambda rs: span([float(r.threads) for r in rs], "{:.0f}")),
        ("CPU, % of a core", lambda rs: span([r.cpu for r in rs], "{:.2f}")),
        ("children's CPU, %", lambda rs: span([r.child_cpu for r in rs], "{:.2f}")),
        ("requests/s served", lambda rs: span([r.requests for r in rs], "{:.1f}")),
        ("requests per reading", lambda rs: span([r.requests / r.readings if r.readings else
                                                  float("nan") for r in rs], "{:.2f}")),
        ("CPU ms per request", lambda rs: span([r.ms_per_request for r in rs], "{:.3f}")),
        ("CPU ms per reading", lambda rs: span([10 * r.cpu / r.readings if r.readings else
                                                float("nan") for r in rs], "{:.3f}")),
        (f"readings/s delivered (offered {offered:g})",
         lambda rs: span([r.readings for r in rs], "{:.1f}")),
        ("simulator CPU, %", lambda rs: span([r.sim_cpu for r in rs], "{:.1f}")),
    ]
    width = max(len(label) for label, _ in rows)
    print()
    print(f"{len(by[names[0]])} run(s) each, min-max:")
    print(f"  {'':{width}}  " + "  ".join(f"{n:>14}" for n in names))
    for label, cell in rows:
        print(f"  {label:{width}}  " + "  ".join(f"{cell(by[n]):>14}" for n in names))
    tb = by.get("TB-GW", [])
    for name in names:
        if name == "TB-GW" or not tb:
            continue
        pairs = list(zip(by[name], tb, strict=False))
        cpu_ratio = [a.cpu / b.cpu for a, b in pairs]
        req_ratio = [a.ms_per_request / b.ms_per_request for a, b in pairs]
        rss_ratio = [a.rss_max / b.rss_max for a, b in pairs]
        mean_ratio = (sum(r.cpu for r in by[name]) / len(by[name])) / (
            sum(r.cpu for r in tb) / len(tb))
        verdict = "MET" if max(cpu_ratio) <= CPU_TARGET_RATIO else (
            "met in some runs" if min(cpu_ratio) <= CPU_TARGET_RATIO else "NOT MET")
        print()
        print(f"{name} / TB-GW, per repeat: CPU {span(cpu_ratio, '{:.3f}')} (of means "
              f"{mean_ratio:.3f} = 1/{1 / mean_ratio:.1f}); CPU per request "
              f"{span(req_ratio, '{:.3f}')}; RSS {span(rss_ratio, '{:.2f}')}")
        print(f"issue 11 target, CPU <= 1/6 of TB-GW's ({CPU_TARGET_RATIO:.3f}): {verdict}")


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="alternating rounds (A B A B ...)")
    p.add_argument("--warmup", type=float, default=10.0,
                   help="seconds after the first delivered reading")
    p.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--poll-ms", type=int, default=1000)
    p.add_argument("--sink", choices=["file", "vm", "both"], default="file",
                   help="iotgw's sink: its default file sink, influxdb -> VictoriaMetrics, "
                        "or a run of each per round")
    p.add_argument("--setup", action="store_true",
                   help="(re)create bench/.venv-tbgw even if it looks installed")
    p.add_argument("--setup-only", action="store_true", help="set up the venv and exit")
    p.add_argument("--tbgw-version", default=TBGW_VERSION)
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="after each window, py-spy each gateway for SECONDS and print where "
                        "its CPU goes (needs .venv/bin/pip install py-spy)")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args()

    versions = ensure_tbgw(args.tbgw_version, args.setup)
    print("TB-GW venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if args.setup_only:
        return 0
    pinned = can_pin() and not args.no_pin
    gw_cpu, side_cpu = (1, 0) if pinned else (None, None)
    if side_cpu is not None:
        os.sched_setaffinity(0, {side_cpu})  # this script, and what it starts, off CPU 1
    subprocess.run([sys.executable, "-m", "compileall", "-q", "gateway", "drivers"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    sinks = ["file", "vm"] if args.sink == "both" else [args.sink]
    offered = args.devices * 1000 / args.poll_ms
    print(f"workload: {args.devices} SDM630 over Modbus TCP on one endpoint, 5 float32 "
          f"points, poll {args.poll_ms} ms ({offered:g} readings/s offered); warm-up "
          f"{args.warmup:g} s after the first delivered reading, window {args.seconds:g} s, "
          f"{args.repeat} round(s): TB-GW, then iotgw ({', '.join(sinks)} sink)")
    print("pinning: " + ("each gateway on CPU 1; simulator, broker, this script on CPU 0"
                         if pinned else "none"))
    base = Path(tempfile.mkdtemp(prefix="iotgw-bench-tbgw-"))
    ctx = multiprocessing.get_context("spawn")
    requests = ctx.Value("q", 0, lock=False)
    ready = ctx.Event()
    sim_port = free_port()
    child = ctx.Process(target=serve_meters, args=(sim_port, args.devices, ready, requests),
                        daemon=True)
    mqtt = TokenMosquitto(base)
    vm = None
    runs: list[Run] = []
    try:
        child.start()
        if not ready.wait(60) or child.pid is None:
            raise RuntimeError("Modbus simulator did not start")
        mqtt.start()
        if "vm" in sinks:
            vm = start_vm(base, side_cpu)
        env = Env(base, args.devices, args.poll_ms, args.warmup, args.seconds, gw_cpu,
                  sim_port, child.pid, requests, mqtt, free_port(), vm, side_cpu,
                  args.profile)
        for repeat in range(1, args.repeat + 1):
            runs.append(run_tbgw(env, repeat))
            print_run(runs[-1])
            for sink in sinks:
                runs.append(run_iotgw(env, repeat, sink))
                print_run(runs[-1])
        summary(runs, offered)
        return 0
    finally:
        mqtt.stop()
        if vm is not None:
            vm.stop()
        child.terminate()
        child.join(5)
        if args.keep:
            print(f"work dir kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
