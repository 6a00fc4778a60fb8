"""OpenSSL only for a config that uses it (gateway/openssl_gate.py, issue 11's footprint).

The process tests run ``iotgw run`` as a real subprocess and read its memory map: a
gateway with no TLS user must have neither libssl nor libcrypto mapped, while still
doing everything it does (Modbus TCP, a serial reader, MQTT ops bus and MQTT devices,
health endpoint, pseudonyms, alarm rules, file sink); a config with one, from the start
or added by a reload, runs with OpenSSL in the same process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import pytest

from drivers.modbus.sim import Device, ServerThread, TcpSim, Units
from drivers.serialbus.sim import Pty
from gateway.buffer import read_stats
from gateway.config.loader import load_config
from gateway.openssl_gate import ENV, users
from tests.gwproc import ROOT, GatewayProcess
from tests.support.mqtt import connect
from tests.support.servers import Mosquitto, VictoriaMetrics, free_port
from tests.support.systemd import NotifySocket
from tests.support.wait import eventually_sync

OPENSSL_LIBRARIES = ("libssl", "libcrypto")


def openssl_mapped(pid: int) -> list[str]:
    """The OpenSSL libraries in the process's memory map (what the RSS figure counts)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if any(lib in line for lib in OPENSSL_LIBRARIES)})


def file_lines(data_dir: Path) -> str:
    current = data_dir / "lines" / "current.lp"
    return current.read_text() if current.exists() else ""


def plain_env() -> dict[str, str]:
    """The test runner's environment without an inherited ``IOTGW_OPENSSL``."""
    return {k: v for k, v in os.environ.items() if k != ENV}


def restarting(record: dict[str, object]) -> bool:
    """The log line of a gateway starting again with OpenSSL."""
    return "needs OpenSSL, which this process started without" in str(record["msg"])


def start(config: Path) -> GatewayProcess:
    gw = GatewayProcess(config)
    gw.env = plain_env()
    return gw.start()


# -- which parts need it --------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("body", "expected"), [
    ("devices: [{id: s1, driver: synthetic}]\n", []),
    ("buses: {m: {type: tcp, host: 127.0.0.1}}\n"
     "devices: [{id: m1, driver: modbus, bus: m, unit: 1, profile: eastron-sdm630}]\n", []),
    ("buses: {r: {type: serial, port: /dev/null}}\n"
     "devices: [{id: m1, driver: modbus, bus: r, unit: 1, profile: eastron-sdm630}]\n",
     ["devices[0] m1 (modbus)"]),
    ("buses: {r: {type: serial, port: 'socket://127.0.0.1:4001'}}\n"
     "devices: [{id: m1, driver: modbus, bus: r, unit: 1, profile: eastron-sdm630}]\n",
     ["devices[0] m1 (modbus)"]),
    ("buses: {r: {type: serial, port: /dev/null}}\n"
     "devices: [{id: m1, driver: modbus, bus: r, unit: 1, profile: eastron-sdm630,"
     " enabled: false}]\n", []),
    ("sinks: [{type: file}, {type: influxdb, name: vm, url: 'http://127.0.0.1:1', bucket: b}]\n",
     ["sinks[1] vm (influxdb)"]),
    ("sinks: [{type: influxdb1, url: 'http://127.0.0.1:1', database: d}]\n",
     ["sinks[0] influxdb1 (influxdb1)"]),
    ("mqtt: {host: 127.0.0.1, base_topic: a/b}\n"
     "devices: [{id: q1, driver: mqtt, topic: a/x, format: number, measurement: m}]\n", []),
    ("mqtt: {host: 127.0.0.1, base_topic: a/b, tls: {insecure: true}}\n", ["mqtt.tls"]),
    ("health: {listen: '127.0.0.1:0'}\n",
     ["health (its /metrics: prometheus_client imports ssl)"]),
    ("health: {listen: '127.0.0.1:0', enabled: false}\n", []),
], ids=["synthetic", "modbus-tcp", "modbus-rtu", "modbus-rtu-over-tcp", "disabled",
        "influxdb", "influxdb1", "mqtt-plain", "mqtt-tls", "health", "health-off"])
def test_each_part_says_whether_it_needs_openssl(tmp_path: Path, body: str,
                                                 expected: list[str]) -> None:
    config = write(tmp_path / "gw.yaml", "gateway: {id: gw, site: s, data_dir: data}\n" + body)
    assert users(load_config(config)) == expected


def test_a_plugin_that_does_not_say_is_given_openssl() -> None:
    """A plugin written before the question existed keeps working: the bases say yes."""
    from gateway.driver import DeviceConfigBase
    from gateway.sinks.base import SinkConfigBase

    class SilentDevice(DeviceConfigBase):
        driver: Literal["silent"] = "silent"

    class SilentSink(SinkConfigBase):
        type: Literal["silent"] = "silent"

    assert SilentDevice(id="d").needs_openssl(None) is True
    assert SilentSink().needs_openssl() is True


# -- the gate in a fresh interpreter ----------------------------------------------------


GATE_PROBE = textwrap.dedent("""
    import json, sys
    from gateway import openssl_gate
    held = openssl_gate.hold_back()
    import asyncio, hashlib, hmac, secrets, pydantic
    out = {"held": held, "asyncio_ssl": asyncio.sslproto.ssl is None,
           "sha256": hashlib.sha256(b"abc").hexdigest(),
           "hmac": hmac.new(b"k" * 16, b"v", "sha256").hexdigest(),
           "token": len(secrets.token_hex(8))}
    try:
        import ssl
        out["ssl"] = "imported"
    except ModuleNotFoundError as exc:
        out["ssl"] = str(exc)
    out["loaded"] = sorted(m for m in ("ssl", "_ssl", "_hashlib") if m in sys.modules)
    print(json.dumps(out))
    """)


def test_held_back_imports_fail_as_on_a_python_without_openssl(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", GATE_PROBE], cwd=ROOT, env=plain_env(),
                         capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(out.stdout)
    assert found["held"] is True
    assert found["asyncio_ssl"] is True  # asyncio took its no-TLS branch
    assert found["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    import hmac
    assert found["hmac"] == hmac.new(b"k" * 16, b"v", "sha256").hexdigest()
    assert found["token"] == 16
    assert "no component of its config said it needs OpenSSL" in found["ssl"]
    assert found["loaded"] == []
    assert "WARNING" not in out.stderr and "ERROR" not in out.stderr, out.stderr


def test_iotgw_openssl_1_loads_it_as_before(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", GATE_PROBE], cwd=ROOT,
                         env={**plain_env(), ENV: "1"}, capture_output=True, text=True,
                         timeout=60, check=True)
    found = json.loads(out.stdout)
    assert found["held"] is False and found["ssl"] == "imported"
    assert found["loaded"] == ["_hashlib", "_ssl", "ssl"]


# -- real gateway processes -------------------------------------------------------------


def test_a_gateway_with_no_tls_user_runs_without_openssl(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Every part that says "no" is here, doing its work, in one process with neither
    libssl nor libcrypto mapped (the ~4.5 MiB of issue 11's 40 MiB file-sink figure).
    The health endpoint is not: prometheus_client imports ``ssl``."""
    port = free_port()
    meter = Device()

    async def setup() -> Callable[[], Awaitable[None]]:
        server = await TcpSim(Units({1: meter}), port).start()
        return server.stop

    key = tmp_path / "pseudonym.key"
    key.write_text("k" * 32)
    key.chmod(0o600)
    base = "compound/openssl/gw"
    serial = Pty()
    with ServerThread(setup):
        config = write(tmp_path / "gw.yaml", f"""\
            gateway: {{id: gw-plain, site: s, data_dir: data}}
            buffer: {{flush_interval: 50ms}}
            mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, username: gw,
                    password: {mosquitto.users['gw']}, base_topic: {base},
                    client_id: openssl-plain}}
            privacy: {{key_file: '{key}'}}
            buses: {{meters: {{type: tcp, host: 127.0.0.1, port: {port}}}}}
            rules:
              - {{id: never, devices: [s1], when: 'seq < 0', severity: 2}}
            devices:
              - {{id: s1, driver: synthetic, interval: 100ms}}
              - {{id: m1, driver: modbus, bus: meters, unit: 1, profile: eastron-sdm630,
                  select: [voltage_l1], interval: 200ms}}
              - {{id: r1, driver: serial_line, port: '{serial.path}',
                  framing: {{mode: delimiter, delimiter: 0A}},
                  pattern: '^CARD:(?P<card>\\d+)$', pseudonymize: [card]}}
              - {{id: q1, driver: mqtt, topic: compound/openssl/sensor, format: number,
                  measurement: openssl_sensor}}
            """)
        gw = start(config)
        try:
            gw.wait_for_log(lambda r: "connected" in r["msg"] and "openssl-plain" in r["msg"])
            assert gw.proc is not None
            serial.write(b"CARD:12345\n")
            client = connect(mosquitto)
            try:
                def sensor_reading_stored() -> bool:
                    client.publish("compound/openssl/sensor", b"21.5", qos=1).wait_for_publish(5)
                    return "openssl_sensor,device=q1" in file_lines(tmp_path / "data")

                eventually_sync(sensor_reading_stored, within=30, every=0.5,
                                what="the MQTT device's reading")
            finally:
                client.close()
            data = tmp_path / "data"
            eventually_sync(lambda: all(f"device={d}" in file_lines(data)
                                        for d in ("s1", "m1", "r1", "q1")),
                            within=30, every=0.1, what="a reading of every device")
            assert openssl_mapped(gw.proc.pid) == []
        finally:
            assert gw.stop() == 0
            serial.close()
    assert "12345" not in file_lines(tmp_path / "data")  # pseudonymized, without _hashlib
    problems = [r for r in gw.records if r["level"] in ("warning", "error")]
    assert not problems, problems
    assert not [r for r in gw.records if "OpenSSL" in r["msg"]]


def test_a_config_with_a_tls_user_runs_with_openssl_in_the_same_process(
        tmp_path: Path, victoria: VictoriaMetrics) -> None:
    config = write(tmp_path / "gw.yaml", f"""\
        gateway: {{id: gw-tls, site: s, data_dir: data}}
        buffer: {{flush_interval: 50ms}}
        sinks: [{{type: influxdb, name: vm, url: '{victoria.url}', bucket: b}}]
        devices: [{{id: openssl-start, driver: synthetic, interval: 100ms,
                    measurement: openssl_start}}]
        """)
    gw = start(config)
    try:
        said = gw.wait_for_log(restarting)
        assert said["msg"].startswith("sinks[0] vm (influxdb) needs OpenSSL")
        gw.wait_for_log(lambda r: "running" in r["msg"])
        assert gw.proc is not None and gw.proc.poll() is None  # the same process runs on
        assert any("libcrypto" in lib for lib in openssl_mapped(gw.proc.pid))
        eventually_sync(lambda: victoria.export('{device="openssl-start"}'), within=30,
                        what="readings in VictoriaMetrics")
    finally:
        assert gw.stop() == 0


def test_a_reload_that_brings_a_tls_user_restarts_in_place_and_loses_nothing(
        tmp_path: Path, victoria: VictoriaMetrics) -> None:
    """Under systemd the restart is a reload (RELOADING=1, then READY=1 from the new
    image): after STOPPING=1 systemd would kill the process at TimeoutStopSec."""
    head = """\
        gateway: {id: gw-reload, site: s, data_dir: data}
        buffer: {flush_interval: 50ms}
        devices: [{id: openssl-reload, driver: synthetic, interval: 50ms,
                   measurement: openssl_reload}]
        """
    config = write(tmp_path / "gw.yaml", head)
    data = tmp_path / "data"
    systemd = NotifySocket(tmp_path / "notify.sock")
    gw = GatewayProcess(config, env={"NOTIFY_SOCKET": str(systemd.path),
                                     "WATCHDOG_USEC": "2000000"})
    gw.env.pop(ENV, None)
    gw.start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        assert gw.proc is not None
        pid = gw.proc.pid
        eventually_sync(lambda: file_lines(data).count("\n") >= 10, within=30,
                        what="readings in the file sink")
        assert openssl_mapped(pid) == []
        write(config, textwrap.dedent(head) + textwrap.dedent(f"""\
            sinks:
              - {{type: file}}
              - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b}}
            """))
        gw.signal(signal.SIGHUP)
        gw.wait_for_log(lambda r: r["msg"].startswith("sinks[1] vm (influxdb) needs OpenSSL"))
        gw.wait_for_log(lambda r: "running" in r["msg"] and "vm" in r["msg"])
        assert gw.proc.poll() is None and gw.proc.pid == pid
        assert any("libcrypto" in lib for lib in openssl_mapped(pid))

        def stamps_in_vm() -> set[int]:
            rows = victoria.export('{device="openssl-reload"}')
            return {t for row in rows for t in row["timestamps"]}

        eventually_sync(lambda: len(stamps_in_vm()) >= 20, within=60, every=0.5,
                        what="readings in VictoriaMetrics after the restart")
        ready = systemd.times("READY=1")
        reloading = systemd.times("RELOADING=1")
        assert len(ready) == 2 and len(reloading) == 1, systemd.messages
        assert ready[0] < reloading[0] < ready[1]
        assert not systemd.times("STOPPING=1")
    finally:
        assert gw.stop() == 0
        systemd.close()
    # The first image committed every reading it received before it stopped to restart;
    # the file sink holds each reading of both images once, or has it still to send.
    before, after = [r for r in gw.records if r["msg"].startswith("stopped:")]
    assert before["readings_in"] == before["readings_committed"] > 0
    assert after["readings_in"] == after["readings_committed"] > 0
    in_file = [int(line.rsplit(" ", 1)[1]) // 1_000_000
               for line in file_lines(data).splitlines() if line]
    unsent = read_stats(data / "buffer.db").sinks["file"].lag_lines
    assert len(in_file) == len(set(in_file))
    assert len(in_file) + unsent == before["readings_committed"] + after["readings_committed"]
    # ... and VictoriaMetrics every reading of the file over the span it has (the last
    # batch may still have been on its way at the stop).
    in_vm = stamps_in_vm()
    assert {t for t in in_file if min(in_vm) <= t <= max(in_vm)} == in_vm
    problems = [r for r in gw.records if r["level"] in ("warning", "error")]
    assert not problems, problems


TLS_METER = '''
import asyncio, threading, time{top}
from typing import Literal

from gateway.driver import DeviceConfigBase, Driver
from gateway.reading import Reading
from gateway.registry import register_driver


class TlsMeterConfig(DeviceConfigBase):
    driver: Literal["tls_meter"]
{declared}

def tls_library() -> str:
    import ssl
    return ssl.OPENSSL_VERSION.split()[0]


class TlsMeter(Driver):
    async def run(self) -> None:
        while True:
            lib = await self.{how}()
            await self.ctx.emit([Reading("tls_meter", {{}}, {{"lib": lib}}, time.time_ns())])
            await asyncio.sleep(0.05)

    async def direct(self) -> str:
        return tls_library()

    async def threaded(self) -> str:
        return await asyncio.to_thread(tls_library)

    async def grouped(self) -> str:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(self.direct())
        return task.result()


register_driver(TlsMeterConfig, TlsMeter)
'''


def install_tls_meter(site: Path, *, top: bool, how: str = "direct") -> None:
    """A third-party driver package with an ``iotgw.drivers`` entry point: ``top``:
    its module imports ``ssl`` and it never says ``needs_openssl``; else it says it
    needs none and imports ``ssl`` when it polls (``how``: directly, in a worker thread,
    inside a TaskGroup)."""
    (site / "tls_meter").mkdir(parents=True)
    (site / "tls_meter" / "__init__.py").write_text(TLS_METER.format(
        top=", ssl" if top else "", how=how,
        declared="" if top else (
            "\n    def needs_openssl(self, bus: object) -> bool:\n        return False\n")))
    dist = site / "tls_meter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tls-meter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[iotgw.drivers]\ntls_meter = tls_meter\n")


@pytest.mark.parametrize(("top", "how", "said"), [
    (True, "direct", "tls_meter/__init__.py:2 (imports ssl) needs OpenSSL"),
    (False, "direct", "task device:t1: {site}/tls_meter/__init__.py:18 (imports ssl) needs"),
    (False, "threaded", "task device:t1: {site}/tls_meter/__init__.py:18 (imports ssl) needs"),
    (False, "grouped", "task device:t1: {site}/tls_meter/__init__.py:18 (imports ssl) needs"),
], ids=["module", "run", "thread", "taskgroup"])
def test_a_plugin_that_imports_ssl_gets_openssl(tmp_path: Path, top: bool, how: str,
                                               said: str) -> None:
    """A third-party driver that imports ``ssl`` in a process without OpenSSL leads to
    one restart with OpenSSL (caught while the config loads, or when its task fails,
    the error wrapped in an ExceptionGroup or raised in a worker thread it awaited);
    its readings then flow. (A driver that catches the ImportError itself and never
    fails cannot be seen: docs/design.md.)"""
    site = tmp_path / "site"
    install_tls_meter(site, top=top, how=how)
    config = write(tmp_path / "gw.yaml", """\
        gateway: {id: gw, site: s, data_dir: data}
        buffer: {flush_interval: 50ms}
        devices: [{id: t1, driver: tls_meter}]
        """)
    gw = GatewayProcess(config)
    gw.env = {**plain_env(), "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    gw.start()
    try:
        record = gw.wait_for_log(restarting)
        assert said.format(site=site) in record["msg"], record
        eventually_sync(lambda: 'lib="OpenSSL"' in file_lines(tmp_path / "data"), within=30,
                        what="the driver's reading")
    finally:
        assert gw.stop() == 0
    assert len([r for r in gw.records if restarting(r)]) == 1


def test_a_bad_reload_is_rejected_even_when_loading_it_imports_ssl(tmp_path: Path) -> None:
    """A misspelt driver name makes the loader import every installed plugin, one of
    which imports ``ssl``: the reload is checked in a child process with OpenSSL and
    rejected; the gateway keeps running without OpenSSL (it used to restart and then
    die of the invalid file, exit 2)."""
    site = tmp_path / "site"
    install_tls_meter(site, top=True)
    head = "gateway: {id: gw, site: s, data_dir: data}\nbuffer: {flush_interval: 50ms}\n"
    config = write(tmp_path / "gw.yaml", head + "devices: [{id: s1, driver: synthetic}]\n")
    gw = GatewayProcess(config)
    gw.env = {**plain_env(), "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    gw.start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        assert gw.proc is not None
        config.write_text(head + "devices: [{id: s1, driver: synthetc}]\n")
        gw.signal(signal.SIGHUP)
        rejected = gw.wait_for_log(lambda r: r["msg"].startswith("reload rejected"))
        assert "synthetc" in rejected["msg"], rejected
        assert gw.proc.poll() is None
        assert openssl_mapped(gw.proc.pid) == []
    finally:
        assert gw.stop() == 0
    assert not [r for r in gw.records if restarting(r)]


def test_a_sighup_during_the_restart_is_not_fatal(tmp_path: Path,
                                                  victoria: VictoriaMetrics) -> None:
    """SIGHUP is ignored across the exec, so a reload request while the new interpreter
    starts cannot end the process (its handler is not installed yet)."""
    config = write(tmp_path / "gw.yaml", f"""\
        gateway: {{id: gw-hup, site: s, data_dir: data}}
        sinks: [{{type: influxdb, name: vm, url: '{victoria.url}', bucket: b}}]
        devices: [{{id: openssl-hup, driver: synthetic, interval: 100ms}}]
        """)
    gw = start(config)
    try:
        gw.wait_for_log(restarting)
        assert gw.proc is not None
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not any("running" in r["msg"]
                                                      for r in gw.records):
            gw.signal(signal.SIGHUP)
            time.sleep(0.005)
        gw.wait_for_log(lambda r: "running" in r["msg"])
        assert gw.proc.poll() is None
    finally:
        assert gw.stop() == 0
