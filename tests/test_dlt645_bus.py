"""DL/T 645 driver against independent meter simulators over a pty and socket://."""

from __future__ import annotations

import logging

import pytest

from drivers.dlt645.points import POINTS_1997, POINTS_2007
from drivers.dlt645.sim import Dlt645Bus, Meter645
from drivers.serialbus.sim import PtySerial, TcpSerial, bcd_le
from gateway.cli import main as cli_main
from gateway.driver import DeviceState
from tests.serial_harness import Harness
from tests.support.serial import BUS, meter_with, simple_meter

# (point, BCD digits as stored, negative, expected value): every DI of the 2007 table.
VALUES_2007 = {
    "energy_total": ("12345678", False, 123456.78),
    "energy_total_t1": ("00001001", False, 10.01),
    "energy_total_t2": ("00002002", False, 20.02),
    "energy_total_t3": ("00003003", False, 30.03),
    "energy_total_t4": ("00004004", False, 40.04),
    "energy_forward": ("00000004", False, 0.04),
    "energy_forward_t1": ("00000101", False, 1.01),
    "energy_forward_t2": ("00000202", False, 2.02),
    "energy_forward_t3": ("00000303", False, 3.03),
    "energy_forward_t4": ("99999999", False, 999999.99),
    "energy_reverse": ("00000010", False, 0.1),
    "energy_reverse_t1": ("00000001", False, 0.01),
    "energy_reverse_t2": ("00000002", False, 0.02),
    "energy_reverse_t3": ("00000003", False, 0.03),
    "energy_reverse_t4": ("00000004", False, 0.04),
    "voltage_a": ("2201", False, 220.1),
    "voltage_b": ("2302", False, 230.2),
    "voltage_c": ("0000", False, 0.0),
    "current_a": ("012345", False, 12.345),
    "current_b": ("001500", True, -1.5),
    "current_c": ("799999", True, -799.999),
    "power_total": ("123456", True, -12.3456),
    "power_a": ("001000", False, 0.1),
    "power_b": ("000001", True, -0.0001),
    "power_c": ("050000", False, 5.0),
    "reactive_power_total": ("000500", True, -0.05),
    "reactive_power_a": ("000100", False, 0.01),
    "reactive_power_b": ("000200", False, 0.02),
    "reactive_power_c": ("000300", True, -0.03),
    "power_factor": ("0987", True, -0.987),
    "power_factor_a": ("1000", False, 1.0),
    "power_factor_b": ("0500", False, 0.5),
    "power_factor_c": ("0001", True, -0.001),
    "frequency": ("5002", False, 50.02),
}
VALUES_1997 = {
    "energy_forward": ("00958015", False, 9580.15),
    "energy_forward_t1": ("00000001", False, 0.01),
    "energy_forward_t2": ("00000002", False, 0.02),
    "energy_forward_t3": ("00000003", False, 0.03),
    "energy_forward_t4": ("00000004", False, 0.04),
    "energy_reverse": ("00001234", False, 12.34),
    "voltage_a": ("0220", False, 220),
    "voltage_b": ("0221", False, 221),
    "voltage_c": ("0222", False, 222),
    "current_a": ("0150", False, 1.5),
    "current_b": ("1000", False, 10.0),
    "current_c": ("0001", False, 0.01),
    "power_total": ("012345", False, 1.2345),
    "power_a": ("000001", False, 0.0001),
    "power_b": ("000010", False, 0.001),
    "power_c": ("000100", False, 0.01),
    "reactive_power_total": ("0123", False, 1.23),
    "power_factor": ("0999", False, 0.999),
}




def device(dev_id: str, address: str, **extra: object) -> dict:
    return {"id": dev_id, "driver": "dlt645", "bus": "line", "address": address,
            "interval": "200ms", "timeout": "150ms", **extra}


@pytest.mark.parametrize(("version", "table", "values"), [
    ("2007", POINTS_2007, VALUES_2007), ("1997", POINTS_1997, VALUES_1997)])
async def test_every_point_of_the_table_decoded_exactly(version: str, table: dict,
                                                        values: dict) -> None:
    assert set(values) == set(table), "test table must cover every DI"
    sim = Dlt645Bus([meter_with("000000000414", table, values, version)])
    with PtySerial(sim) as pty:
        h = Harness()
        h.add(device("m-all", "414", protocol=version, points=list(table), interval="10s"),
              {"port": pty.path, **BUS})
        h.start()
        await h.wait_for(lambda: h.counts().get("m-all", 0) >= 1)
        await h.stop()
    reading = h.readings["m-all"][0]
    assert reading.measurement == "energy_meter"
    assert dict(reading.fields) == {name: v[2] for name, v in values.items()}
    assert h.contexts["m-all"].status.state is DeviceState.ONLINE


async def test_several_meters_one_bus_one_dead() -> None:
    meters = [simple_meter(f"00000000000{i}", f"0000{i}000") for i in range(1, 4)]
    sim = Dlt645Bus([*meters, Meter645("000000000009", dead=True)])
    with PtySerial(sim) as pty:
        h = Harness()
        for i in range(1, 4):
            h.add(device(f"m{i}", str(i)), {"port": pty.path, **BUS})
        h.add(device("dead", "9", offline_after=1), {"port": pty.path, **BUS})
        h.start()
        await h.wait_for(lambda: all(h.counts().get(f"m{i}", 0) >= 4 for i in range(1, 4))
                         and h.contexts["dead"].status.state is DeviceState.OFFLINE)
        await h.stop()
    for i in range(1, 4):
        assert h.readings[f"m{i}"][-1].fields == {
            "energy_total": i * 10.0, "voltage_a": 220.0, "current_a": -0.5,
            "power_total": 0.011}
    dead = h.contexts["dead"].status
    assert dead.counters["timeout"] >= 1
    assert dead.last_error is not None and dead.last_error.startswith("timeout")
    assert "dead" not in h.readings


async def test_error_reply_is_partial_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    sim = Dlt645Bus([simple_meter("000000000001")])
    with PtySerial(sim) as pty:
        h = Harness()
        h.add(device("m-err", "1", points=["energy_total", "frequency"]),
              {"port": pty.path, **BUS})
        with caplog.at_level(logging.WARNING):
            h.start()
            await h.wait_for(lambda: h.counts().get("m-err", 0) >= 3)
            await h.stop()
    assert all(dict(r.fields) == {"energy_total": 123.45} for r in h.readings["m-err"])
    status = h.contexts["m-err"].status
    assert status.counters["error_no_data"] >= 3
    assert status.state is DeviceState.ONLINE
    lines = [r for r in caplog.records if "frequency" in r.getMessage()]
    assert len(lines) == 1 and "no such data" in lines[0].getMessage()


async def test_all_points_refused_is_error_state() -> None:
    meter = simple_meter("000000000001")
    meter.error_code[POINTS_2007["energy_total"].di] = 0x04
    sim = Dlt645Bus([meter])
    with PtySerial(sim) as pty:
        h = Harness()
        h.add(device("m-pw", "1", points=["energy_total"], offline_after=1),
              {"port": pty.path, **BUS})
        h.start()
        await h.wait_for(lambda: h.contexts["m-pw"].status.state is DeviceState.ERROR)
        await h.stop()
    last_error = h.contexts["m-pw"].status.last_error
    assert last_error is not None and "password" in last_error


async def test_follow_up_frames_are_joined() -> None:
    meter = simple_meter("000000000001")
    meter.values[0x04000401] = bcd_le("1234567890123456")
    meter.follow_chunks[0x04000401] = 3  # B1 + two follow-up frames (0x12 -> B2, 92)
    sim = Dlt645Bus([meter])
    with PtySerial(sim) as pty:
        h = Harness()
        h.add(device("m-fu", "1", points=["serial_no"], custom_points={
            "serial_no": {"di": "04000401", "format": "XXXXXXXXXXXXXXXX"}}),
            {"port": pty.path, **BUS})
        h.start()
        await h.wait_for(lambda: h.counts().get("m-fu", 0) >= 1)
        await h.stop()
    assert h.readings["m-fu"][0].fields == {"serial_no": 1234567890123456}
    controls = [req[8] for req in sim.requests]
    assert controls[:3] == [0x11, 0x12, 0x12]
    assert [req[-3] - 0x33 for req in sim.requests[1:3]] == [1, 2]  # frame sequence numbers


async def test_noise_corruption_and_foreign_replies_are_survived() -> None:
    sim = Dlt645Bus([simple_meter("000000000001")], noise=b"\x00\x68\x12\xff\x16garbage",
                    corrupt_next=2, impostor="000000000077")
    with PtySerial(sim) as pty:
        h = Harness()
        h.add(device("m-noisy", "1"), {"port": pty.path, **BUS})
        h.start()
        await h.wait_for(lambda: h.counts().get("m-noisy", 0) >= 3)
        await h.stop()
    assert h.readings["m-noisy"][-1].fields["energy_total"] == 123.45
    counters = h.contexts["m-noisy"].status.counters
    assert counters["noise_bytes"] > 0
    assert counters["foreign_reply"] > 0
    assert counters.get("bad_frame", 0) + counters.get("frame_error", 0) >= 1


async def test_socket_url_transport() -> None:
    sim = Dlt645Bus([simple_meter("000000000005")])
    with TcpSerial(sim) as server:
        h = Harness()
        h.add(device("m-tcp", "5"), {"port": server.url, **BUS, "parity": "E"})
        h.start()
        await h.wait_for(lambda: h.counts().get("m-tcp", 0) >= 2)
        await h.stop()
    assert h.readings["m-tcp"][0].fields["voltage_a"] == 220.0


async def test_unreachable_device_server_is_offline_not_a_crash() -> None:
    from tests.support.servers import free_port

    h = Harness()
    h.add(device("m-gone", "5", offline_after=1),
          {"port": f"socket://127.0.0.1:{free_port()}", **BUS})
    h.start()
    await h.wait_for(lambda: h.contexts["m-gone"].status.state is DeviceState.OFFLINE)
    await h.stop()
    assert h.contexts["m-gone"].status.counters["no_connection"] >= 1


def test_cli_discover_and_read(capsys: pytest.CaptureFixture[str]) -> None:
    sim = Dlt645Bus([simple_meter("123456789012")])
    with PtySerial(sim) as pty:
        assert cli_main(["dlt645", "discover", "--port", pty.path, "--timeout", "0.5",
                        "--parity", "N"]) == 0
        assert capsys.readouterr().out.strip() == "123456789012"
        assert cli_main(["dlt645", "read", "--port", pty.path, "--address", "123456789012",
                         "--timeout", "0.5", "--parity", "N"]) == 0
        out = capsys.readouterr().out
    assert "energy_total" in out and "123.45 kWh" in out and "-0.5 A" in out
