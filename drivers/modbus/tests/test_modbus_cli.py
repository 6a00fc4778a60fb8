"""``iotgw modbus scan`` / ``iotgw modbus read`` against real pymodbus servers (TCP, and RTU
over a pty pair), and their error paths. Commands run in-process through the modbus
subcommands' own parser (so another driver's import problem cannot hide these), plus one
run of the real ``python -m gateway`` entry point."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from drivers.modbus.cli import add_commands
from drivers.modbus.profiles import load_profile
from drivers.modbus.sim import Device, PtyRelay, RtuSim, ServerThread, TcpSim, Units
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[3]

WATER = {  # water-meter-ultrasonic, decoded as `read` prints them
    "total": "1234.567", "volume_reverse": "0.5", "flow_rate": "1.25",
    "water_temperature": "18.5", "status": "5", "empty_pipe": "True",
    "low_battery": "False", "reverse_flow": "True", "battery_voltage": "3.6",
    "serial_number": "'WM000042'",
}


def water_meter() -> Device:
    device = Device()
    values = {"total": 1234.567, "volume_reverse": 0.5, "flow_rate": 1.25,
              "water_temperature": 18.5, "status": 5, "battery_voltage": 3.6,
              "serial_number": "WM000042"}
    for point in load_profile("water-meter-ultrasonic").points:
        if point.name in values:
            device.put(point, values[point.name])
    return device


def iotgw(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="iotgw")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def table(out: str) -> dict[str, list[str]]:
    """The rows of ``read``'s table by point name: [table, addr, type, value, (unit)]."""
    lines = out.splitlines()
    assert lines[0].split() == ["point", "table", "addr", "type", "value", "unit"], out
    return {line.split()[0]: line.split()[1:] for line in lines[1:-1]}


@pytest.fixture(scope="module")
def tcp() -> Iterator[tuple[int, Units]]:
    """Unit 1: a water meter; unit 3: holding[0] = 333; unit 4 rejects register 0;
    unit 2 is absent (no reply)."""
    port = free_port()
    units = Units({1: water_meter(), 3: Device(holding={0: 333}),
                   4: Device(holes={"holding": {0}})})

    async def setup() -> Callable[[], Awaitable[None]]:
        server = await TcpSim(units, port).start()
        return server.stop

    with ServerThread(setup):
        yield port, units


def test_scan_tcp_lists_the_units_that_answer(tcp: tuple[int, Units],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    port, _ = tcp
    rc = iotgw("modbus", "scan", "--host", "127.0.0.1", "--tcp-port", str(port),
               "--units", "1-4", "--timeout", "0.2")
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out == [
        "unit   1: answers, holding[0] = 54919",  # total 1234567 & 0xFFFF (CDAB)
        "unit   3: answers, holding[0] = 333",
        "unit   4: answers (exception 2)",
        f"3 unit(s) answered on 127.0.0.1:{port}",
    ]


def test_read_tcp_profile_prints_decoded_table(tcp: tuple[int, Units],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    port, units = tcp
    before = units.count(1)
    rc = iotgw("modbus", "read", "--host", "127.0.0.1", "--tcp-port", str(port),
               "--profile", "water-meter-ultrasonic", "--unit", "1")
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = table(out)
    assert {name: row[3] for name, row in rows.items()} == WATER
    assert rows["total"] == ["holding", "0", "uint32", "1234.567", "m3"]
    assert rows["serial_number"][:3] == ["holding", "16", "string"]
    assert out.splitlines()[-1] == "1 request(s) for 10 point(s)"
    assert units.count(1) - before == 1  # the planner's single coalesced read


def test_read_reports_rejected_points(tcp: tuple[int, Units],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    port, _ = tcp
    rc = iotgw("modbus", "read", "--host", "127.0.0.1", "--tcp-port", str(port),
               "--profile", "water-meter-ultrasonic", "--unit", "4")
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = table(out)
    assert rows["total"][3:] == ["REJECTED", "(read", "holding[0..1]", "unit", "4:",
                                        "exception", "2", "(illegal", "data", "address))", "m3"]
    assert [n for n, row in rows.items() if row[3] == "REJECTED"] == ["total"]
    assert rows["flow_rate"][3] == "0.0"  # the rest of the map still reads
    # 0..19 rejected -> 0..9 | 16..19; 0..9 -> 0..6 | 8..9; 0..6 -> 0..3 | 4..6; 0..3 ->
    # 0..1 (bad) | 2..3: four reads cover what is left.
    assert out.splitlines()[-1] == "4 request(s) for 10 point(s)"


def test_read_with_config_and_device(tcp: tuple[int, Units], capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    port, _ = tcp
    config = tmp_path / "gw.yaml"
    config.write_text(f"""\
gateway: {{id: gw-cli, site: test, data_dir: data}}
buses:
  plant: {{type: tcp, host: 127.0.0.1, port: {port}}}
sinks: []
devices:
  - {{id: wm-7, driver: modbus, bus: plant, unit: 1, profile: water-meter-ultrasonic,
     overrides: {{flow_rate: {{scale: 1000, unit: l/h}}}}}}
""")
    rc = iotgw("modbus", "read", "--config", str(config), "--device", "wm-7")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert table(out)["flow_rate"] == ["holding", "4", "float32", "1250.0", "l/h"]
    rc = iotgw("modbus", "scan", "--config", str(config), "--bus", "plant", "--units", "3")
    assert rc == 0
    assert capsys.readouterr().out.splitlines()[0] == "unit   3: answers, holding[0] = 333"


def test_scan_nobody_home(tcp: tuple[int, Units], capsys: pytest.CaptureFixture[str]) -> None:
    port, _ = tcp
    rc = iotgw("modbus", "scan", "--host", "127.0.0.1", "--tcp-port", str(port),
               "--units", "2,5-6", "--timeout", "0.1")
    assert rc == 1
    assert capsys.readouterr().out.splitlines() == [
        f"0 unit(s) answered on 127.0.0.1:{port}"]


@pytest.mark.parametrize("command", ["scan", "read"])
def test_closed_tcp_port_is_a_clear_error(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens
    extra = ["--units", "1-247"] if command == "scan" else ["--profile", "eastron-sdm630",
                                                              "--unit", "1"]
    rc = iotgw("modbus", command, "--host", "127.0.0.1", "--tcp-port", str(port), *extra)
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.out == ""
    assert captured.err.startswith(f"error: cannot connect to 127.0.0.1:{port}: ")
    assert "Connect call failed" in captured.err or "refused" in captured.err


@pytest.mark.parametrize("command", ["scan", "read"])
def test_missing_serial_port_is_a_clear_error(command: str, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    port = str(tmp_path / "ttyUSB9")
    extra = ["--units", "1-3"] if command == "scan" else ["--profile", "eastron-sdm630",
                                                          "--unit", "1"]
    rc = iotgw("modbus", command, "--port", port, *extra)
    captured = capsys.readouterr()
    assert (rc, captured.out) == (1, "")
    assert captured.err == f"error: no such serial port {port}\n"


def test_read_needs_a_device_or_profile(capsys: pytest.CaptureFixture[str]) -> None:
    rc = iotgw("modbus", "read", "--host", "127.0.0.1", "--unit", "1")
    assert rc == 2
    assert "give --device (with --config) or --profile with --unit" in capsys.readouterr().err


def test_scan_and_read_rtu_over_a_pty(capsys: pytest.CaptureFixture[str]) -> None:
    units = Units({1: water_meter(), 7: Device(holding={0: 777})})
    ports: dict[str, str] = {}

    async def setup() -> Callable[[], Awaitable[None]]:
        relay = await PtyRelay().start()
        server = await RtuSim(units, relay.server_port).start()
        ports["client"] = relay.client_port

        async def stop() -> None:
            await server.stop()
            await relay.stop()
        return stop

    with ServerThread(setup):
        rc = iotgw("modbus", "scan", "--port", ports["client"], "--units", "1-8",
                   "--timeout", "0.1")
        scan = capsys.readouterr().out.splitlines()
        rc_read = iotgw("modbus", "read", "--port", ports["client"],
                        "--profile", "water-meter-ultrasonic", "--unit", "1")
        out = capsys.readouterr().out
    assert rc == 0
    assert scan == ["unit   1: answers, holding[0] = 54919",
                    "unit   7: answers, holding[0] = 777",
                    f"2 unit(s) answered on {ports['client']}"]
    assert rc_read == 0
    assert {name: row[3] for name, row in table(out).items()} == WATER


def test_real_entry_point(tcp: tuple[int, Units]) -> None:
    """The same scan through ``python -m gateway`` (what an installer types as iotgw)."""
    port, _ = tcp
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "modbus", "scan", "--host", "127.0.0.1",
         "--tcp-port", str(port), "--units", "3", "--timeout", "0.2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["unit   3: answers, holding[0] = 333",
                                        f"1 unit(s) answered on 127.0.0.1:{port}"]
