"""Health and metrics endpoint, systemd notify/watchdog, ``iotgw status``.

Against the real thing: an in-process Gateway or a real ``iotgw run`` with synthetic
devices at a high rate, HTTP over loopback, a real unix datagram socket as systemd's
NOTIFY_SOCKET, and the Prometheus client's own parser.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.loader import load_config
from gateway.health.checks import evaluate
from gateway.health.metrics import render
from gateway.health.monitor import monitor_for
from gateway.health.statustable import format_status
from gateway.runtime import Gateway
from tests.gwproc import ROOT, GatewayProcess
from tests.support.servers import free_port
from tests.support.systemd import NotifySocket
from tests.support.wait import eventually

FAST_DEVICES = "".join(
    f"  - {{id: fast-{i}, driver: synthetic, interval: 1ms, fields: 4, "
    f"tags: {{building: \"{i}\"}}}}\n" for i in range(4))


def write_config(path: Path, health: str, devices: str = FAST_DEVICES) -> Path:
    path.write_text("gateway: {id: gw-h, site: health-site, data_dir: data}\n"
                    "buffer: {flush_interval: 50ms}\n"
                    f"health: {health}\n"
                    "devices:\n" + devices)
    return path


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, parsed by the client library."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


# -- verdicts ------------------------------------------------------------------------


def base_snapshot() -> dict[str, Any]:
    return {
        "loop": {"lag_seconds": 0.01, "max_lag_seconds": 5.0, "commit_stalled_seconds": 0.0,
                 "commit_stall_limit_seconds": 60.0},
        "buffer": {"ok": True, "error": None},
        "readings": {"pending": 0},
        "pipeline_running": True,
        "sinks": {"vm": {"state": "ok"}, "archive": {"state": "retrying"}},
    }


def test_verdicts_say_which_check_fails() -> None:
    snap = base_snapshot()
    assert evaluate(snap)["live"] and evaluate(snap)["ready"]

    snap["sinks"] = {"vm": {"state": "failed"}, "archive": {"state": "failed"}}
    health = evaluate(snap)
    assert health["live"] and not health["ready"]
    assert "failed: archive, vm" in health["readiness"]["sink_available"]["detail"]

    snap = base_snapshot()
    snap["loop"]["lag_seconds"] = 7.5
    health = evaluate(snap)
    assert not health["live"] and not health["ready"]
    assert health["liveness"]["event_loop"]["detail"] == "lag 7.500s (limit 5s)"

    snap = base_snapshot()
    snap["loop"]["commit_stalled_seconds"] = 90.0
    snap["readings"]["pending"] = 1200
    health = evaluate(snap)
    assert not health["live"]
    assert "1200 readings waiting 90s" in health["liveness"]["buffer_writable"]["detail"]

    snap = base_snapshot()
    snap["buffer"] = {"ok": False, "error": "no answer from the buffer within 5s"}
    health = evaluate(snap)
    assert not health["live"] and not health["ready"]

    snap = base_snapshot()
    snap["tasks"] = {"failing": {"mqtt:devices-intake": {
        "error": "UnicodeEncodeError: surrogates not allowed", "failures": 3,
        "last_failure": 0.0}}}
    health = evaluate(snap)
    assert health["live"] and not health["ready"]
    assert health["readiness"]["tasks_healthy"]["detail"] == (
        "mqtt:devices-intake failed 3x: UnicodeEncodeError: surrogates not allowed")


# -- the endpoint under load -----------------------------------------------------------


async def start(config: Path) -> tuple[Gateway, asyncio.Task[None]]:
    gateway = Gateway(load_config(config))
    task = asyncio.create_task(gateway.run())
    await eventually(lambda: gateway.pipeline is not None
                     and gateway.stats.readings_committed > 0, within=10, every=0.05,
                     what="the gateway committing readings")
    return gateway, task


async def stop(gateway: Gateway, task: asyncio.Task[None]) -> None:
    gateway.request_stop()
    async with asyncio.timeout(30):
        await task


async def test_endpoints_under_load(tmp_path: Path) -> None:
    port = free_port()
    gateway, task = await start(write_config(
        tmp_path / "gw.yaml", f"{{listen: '127.0.0.1:{port}', report_interval: 0}}"))
    base = f"http://127.0.0.1:{port}"
    statuses: dict[str, list[int]] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def hammer(path: str, until: float) -> str:
                body = ""
                while time.monotonic() < until:
                    async with http.get(base + path) as response:
                        statuses.setdefault(path, []).append(response.status)
                        body = await response.text()
                return body

            until = time.monotonic() + 2.0
            bodies = await asyncio.gather(
                *(hammer(p, until) for p in ("/healthz", "/readyz", "/metrics", "/status")
                  for _ in range(3)))
            first = metric_values(bodies[6])
            await asyncio.sleep(0.5)
            async with http.get(base + "/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=")
                second = metric_values(await response.text())
            async with http.get(base + "/status") as response:
                status = await response.json()
    finally:
        await stop(gateway, task)

    for path, codes in statuses.items():
        assert set(codes) == {200}, (path, codes)
        assert len(codes) >= 10, f"{path} answered only {len(codes)} times in 2s under load"

    received = second[("iotgw_readings_received_total", ())]
    committed = second[("iotgw_readings_committed_total", ())]
    assert received > 4000, "4 devices at 1 kHz for 2.5 s"
    assert committed <= received
    assert received > first[("iotgw_readings_received_total", ())], "counters move"
    assert second[("iotgw_live", ())] == 1 and second[("iotgw_ready", ())] == 1
    assert second[("iotgw_sink_state", (("sink", "file"), ("state", "ok")))] == 1
    assert second[("iotgw_sink_sent_lines_total", (("sink", "file"),))] > 0
    assert ("iotgw_sink_lag_lines", (("sink", "file"),)) in second
    assert ("iotgw_buffer_depth_lines", ()) in second
    assert second[("iotgw_buffer_max_bytes", ())] == 512 * 1024**2
    assert second[("iotgw_buffer_quarantined_lines_total", ())] == 0
    assert second[("iotgw_buffer_quarantined_chunks_total", ())] == 0
    assert "QUARANTINED" not in format_status(status)
    damaged = copy.deepcopy(status)  # as a buffer with two chunks that failed their CRC
    damaged["buffer"].update(quarantined_chunks_total=2, quarantined_lines_total=8)
    assert "QUARANTINED 2 damaged chunks (8 lines, not sent" in format_status(damaged)
    assert "iotgw_buffer_quarantined_chunks_total 2.0" in render(damaged).decode()
    for i in range(4):
        assert second[("iotgw_device_state", (("device", f"fast-{i}"), ("state", "online")))] == 1
    assert second[("iotgw_event_loop_lag_seconds", ())] < 1.0
    assert second[("iotgw_event_loop_stalls_total", ())] == 0
    info = [k for k in second if k[0] == "iotgw_info"]
    assert info == [("iotgw_info", (("gateway", "gw-h"), ("site", "health-site"),
                                    ("version", status["gateway"]["version"])))]
    assert status["health"]["live"] and status["health"]["ready"]
    assert set(status["devices"]) == {f"fast-{i}" for i in range(4)}


def test_health_section_is_optional_and_off_by_default(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml", "{listen: '127.0.0.1:9108'}")
    assert load_config(config).model.health.port == 9108
    config.write_text("gateway: {id: gw-h, site: s}\n")
    assert load_config(config).model.health is None


# -- a stalled event loop ----------------------------------------------------------------


async def test_stalled_loop_fails_health_and_stops_watchdog_pings(
        tmp_path: Path, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    port = free_port()
    gateway, task = await start(write_config(
        tmp_path / "gw.yaml", f"{{listen: '127.0.0.1:{port}', max_loop_lag: 500ms, "
        "report_interval: 0}",
        devices="  - {id: d, driver: synthetic, interval: 10ms}\n"))
    monitor = monitor_for(gateway)
    samples: list[tuple[float, bool]] = []
    probes: list[tuple[float, int | str]] = []
    done = threading.Event()

    def observe() -> None:  # outside the loop, like systemd and a prober
        while not done.is_set():
            samples.append((time.monotonic(), monitor.loop_ok()))
            time.sleep(0.05)

    def probe() -> None:
        while not done.is_set():
            at = time.monotonic()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz",
                                            timeout=0.8) as response:
                    probes.append((at, response.status))
            except urllib.error.HTTPError as exc:
                probes.append((at, exc.code))
            except OSError:
                probes.append((at, "no answer"))
            time.sleep(0.1)

    watchers = [threading.Thread(target=observe), threading.Thread(target=probe)]
    try:
        notify_socket.wait_for("READY=1")
        await asyncio.sleep(1.0)
        for watcher in watchers:
            watcher.start()
        await asyncio.sleep(0.5)
        stall_start = time.monotonic()
        time.sleep(2.5)  # a driver calling a blocking library function on the loop  # noqa: ASYNC251
        stall_end = time.monotonic()
        await asyncio.sleep(1.5)
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics") as response:
            after = metric_values(await response.text())
    finally:
        done.set()
        for watcher in watchers:
            if watcher.is_alive():
                watcher.join(timeout=5)
        await stop(gateway, task)

    pings = notify_socket.times("WATCHDOG=1")
    assert any(t < stall_start for t in pings), "pings before the stall"
    assert not [t for t in pings if stall_start + 0.05 < t < stall_end], "pinged while stuck"
    assert any(t > stall_end for t in pings), "pings resume once the loop turns again"
    during = [ok for t, ok in samples if stall_start + 1.1 < t < stall_end]  # beat + limit
    assert during and not any(during), "the watchdog logic saw the stall while it lasted"
    assert all(ok for t, ok in samples if t < stall_start)
    stuck = [r for t, r in probes if stall_start + 0.2 < t < stall_end - 0.9]
    assert stuck and all(r == "no answer" for r in stuck), probes
    assert [r for t, r in probes if t > stall_end + 1.0][-1] == 200
    assert after[("iotgw_event_loop_stalls_total", ())] >= 1
    assert after[("iotgw_event_loop_lag_max_seconds", ())] >= 2.0
    stalled_logs = [r for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert stalled_logs and "test_stalled_loop_fails_health" in stalled_logs[0].getMessage(), \
        "the log names where the loop thread was stuck"
    assert notify_socket.times("STOPPING=1")


# -- the real process --------------------------------------------------------------------


def test_iotgw_run_notifies_systemd_serves_health_and_reports_itself(
        tmp_path: Path, notify_socket: NotifySocket) -> None:
    port = free_port()
    config = write_config(tmp_path / "gw.yaml",
                          f"{{listen: '127.0.0.1:{port}', report_interval: 500ms}}")
    gw = GatewayProcess(config, env={"NOTIFY_SOCKET": str(notify_socket.path),
                                     "WATCHDOG_USEC": "1000000"}).start()
    try:
        ready = notify_socket.wait_for("READY=1")
        gw.wait_for_log(lambda r: "health_url" in r)
        time.sleep(2.0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = metric_values(resp.read().decode())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert resp.status == 200 and resp.read().startswith(b"ok\n")
        status = subprocess.run(
            [sys.executable, "-m", "gateway", "status", str(config)], cwd=ROOT,
            capture_output=True, text=True, timeout=60)
        as_json = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--json", str(config)], cwd=ROOT,
            capture_output=True, text=True, timeout=60)
    finally:
        assert gw.stop() == 0
    stopping = notify_socket.wait_for("STOPPING=1")

    pings = [t for t in notify_socket.times("WATCHDOG=1") if ready < t < stopping]
    assert len(pings) >= 3, notify_socket.messages
    # The median, not the max: on a loaded shared machine the whole process can be
    # descheduled for seconds, which says nothing about the ping interval it chose.
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    assert gaps[len(gaps) // 2] < 0.9, f"pings at about half of WatchdogSec=1s: {gaps}"
    assert any(m.startswith("STATUS=") and "devices online" in m
               for _, m in notify_socket.messages)
    assert metrics[("iotgw_readings_received_total", ())] > 1000
    assert metrics[("iotgw_live", ())] == 1

    assert status.returncode == 0, status.stdout + status.stderr
    assert "live: yes   ready: yes" in status.stdout
    for device in ("fast-0", "fast-3"):
        assert device in status.stdout
    assert "file  ok" in status.stdout
    assert json.loads(as_json.stdout)["gateway"]["id"] == "gw-h"

    lines = b"".join(p.read_bytes() for p in (tmp_path / "data" / "lines").glob("*.lp"))
    assert b"gateway_stats,device=gw-h,gateway=gw-h,site=health-site " in lines
    assert b"gateway_sink,device=gw-h,gateway=gw-h,sink=file,site=health-site " in lines
    assert b"device_status,building=2,device=fast-2,gateway=gw-h,site=health-site " in lines
    assert b'state="online"' in lines


def test_status_without_a_running_gateway_says_why(tmp_path: Path) -> None:
    config = write_config(tmp_path / "gw.yaml", f"{{listen: '127.0.0.1:{free_port()}'}}")
    result = subprocess.run([sys.executable, "-m", "gateway", "status", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no answer from http://127.0.0.1:" in result.stdout
    config.write_text("gateway: {id: gw-h, site: s, data_dir: data}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "status", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no enabled 'health' section" in result.stdout


# -- sd_notify protocol ----------------------------------------------------------------


def test_notifier_speaks_the_datagram_protocol(tmp_path: Path) -> None:
    from gateway.sdnotify import Notifier, watchdog_period

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "n.sock"))
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        assert notifier.send("READY=1", "STATUS=hello")
        assert server.recv(100) == b"READY=1\nSTATUS=hello"
        notifier.close()
    abstract = f"@iotgw-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + abstract[1:])
        assert Notifier({"NOTIFY_SOCKET": abstract}).send("WATCHDOG=1")
        assert server.recv(100) == b"WATCHDOG=1"
    assert not Notifier({}).send("READY=1")
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "30000000",
                            "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_period({}) is None


# -- a buffer whose thread is stuck ---------------------------------------------------------


async def test_healthz_answers_at_once_while_the_buffer_thread_is_stuck(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """During a disk stall /healthz took 5 s (an outside probe): each request queued a
    stats query behind the stuck commit and waited for it. It now reports what it knows.
    The buffer's one worker is held by a query that waits on an event (what a frozen
    fsync does to it); "stuck" is 1 h here, so a request that still waited for the
    buffer would hang this test instead of answering."""
    from gateway.health import snapshot

    monkeypatch.setattr(snapshot, "BUFFER_PROBE_TIMEOUT", 3600.0)
    port = free_port()
    gateway, task = await start(write_config(
        tmp_path / "gw.yaml", f"{{listen: '127.0.0.1:{port}', report_interval: 0}}"))
    base = f"http://127.0.0.1:{port}"
    release = threading.Event()
    held: asyncio.Future[bool] | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.get(base + "/healthz") as response:  # before the stall
                assert response.status == 200, await response.text()
            held = asyncio.ensure_future(gateway.buffer.query(lambda _conn: release.wait()))
            async with http.get(base + "/healthz") as response:
                assert response.status == 200, await response.text()
            async with http.get(base + "/status") as response:
                buffer = (await response.json())["buffer"]
            assert buffer["ok"] and buffer["unanswered_seconds"] > 0, buffer
            assert "depth_lines" in buffer, "the last answer's figures"

            monkeypatch.setattr(snapshot, "BUFFER_PROBE_TIMEOUT", 0.0)
            async with http.get(base + "/healthz") as response:
                assert response.status == 503
                assert "FAIL buffer_writable: no answer from the buffer for" in \
                    await response.text()
    finally:
        release.set()
        if held is not None:
            await held
        await stop(gateway, task)
