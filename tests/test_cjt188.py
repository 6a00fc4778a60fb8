"""CJ/T 188: reference frames, both DI orders, units, heat layout, meters on a pty bus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivers.cjt188 import frame
from drivers.cjt188.data import DataError, decode_read_data, di_bytes
from drivers.cjt188.sim import Cjt188Bus, Meter188, water_body
from drivers.serialbus.sim import PtySerial, bcd_le
from gateway.cli import main as cli_main
from gateway.driver import DeviceState
from tests.serial_harness import Harness

CASES = sorted(p for p in (Path(__file__).parent.parent / "drivers/cjt188/testcases").iterdir()
               if p.is_dir())
BUS = {"baudrate": 2400, "parity": "N", "timeout": 0.3}  # parity N: see test_dlt645_bus


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_frames(case: Path) -> None:
    exp = json.loads((case / "expected.json").read_text())
    request = bytes.fromhex((case / "request.hex").read_text())
    reply = bytes.fromhex((case / "reply.hex").read_text())
    ours = frame.encode(frame.METER_TYPES[exp["meter_type"]], exp["address"], frame.READ_DATA,
                        di_bytes(0x901F, exp["di_order"]) + bytes([exp["ser"]]))
    assert ours.lstrip(b"\xfe") == request.lstrip(b"\xfe")
    if reply:
        scanned = frame.scan(b"\x00\x13" + reply)
        assert scanned.frame == reply and scanned.junk == 2
        decoded = frame.decode(reply)
        assert decoded.address == exp["address"] and decoded.is_reply
        assert decode_read_data(decoded.meter_type, decoded.data[3:]) == exp["fields"]


@pytest.mark.parametrize(("unit", "digits", "value"), [
    (0x2C, "00012345", 123.45),  # m3
    (0x29, "00012345", 0.12345),  # L -> m3
    (0x05, "00000100", 1.0),  # kWh
    (0x11, "00000100", 277.777778),  # GJ -> kWh
])
def test_units_are_converted(unit: int, digits: str, value: float) -> None:
    body = water_body(digits, unit, "00000000", 0x2C, "20240229235959", st1=0b101)
    fields = decode_read_data(0x10, body)
    assert fields["total"] == value
    assert fields["meter_time"] == "2024-02-29T23:59:59"
    assert fields["valve"] == "closed" and fields["battery_low"] is True


def test_unknown_unit_and_short_body_are_errors() -> None:
    with pytest.raises(DataError, match="unit"):
        decode_read_data(0x10, water_body("00000001", 0x77, "00000000", 0x2C, "20240101000000"))
    with pytest.raises(DataError, match="bytes"):
        decode_read_data(0x10, b"\x00" * 5)


def heat_body() -> bytes:
    return (bcd_le("00001000") + b"\x05" + bcd_le("00002000") + b"\x05"
            + bcd_le("00000150") + b"\x17" + bcd_le("00012500") + b"\x35"
            + bcd_le("00345600") + b"\x2c" + bcd_le("006512") + bcd_le("004533")
            + bcd_le("001234") + bcd_le("20230115080000") + b"\x03\x00")


def test_heat_meter_layout() -> None:
    assert decode_read_data(0x20, heat_body()) == {
        "settlement_heat": 10.0, "heat": 20.0, "heat_power": 1.5, "flow_rate": 1.25,
        "total_volume": 3456.0, "supply_temp": 65.12, "return_temp": 45.33,
        "working_hours": 1234, "meter_time": "2023-01-15T08:00:00", "valve": "abnormal",
        "battery_low": False, "status": 3}


async def test_meters_on_one_bus_both_di_orders_and_a_dead_one() -> None:
    sim = Cjt188Bus([
        Meter188("00000000000001", body=water_body("00012345", 0x2C, "00010000", 0x2C,
                                                    "20240301120000")),
        Meter188("00000000000002", body=water_body("00000500", 0x29, "00000100", 0x29,
                                                    "20240301120001"), di_low_first=True),
        Meter188("00000000000003", meter_type=0x20, body=heat_body()),
        Meter188("00000000000009", dead=True),
    ], noise=b"\x68\x00\x01junk")
    with PtySerial(sim) as pty:
        h = Harness()
        for i, (mtype, order) in enumerate([("cold_water", "2004"), ("hot_water", "2018"),
                                            ("heat", "2004")], start=1):
            h.add({"id": f"w{i}", "driver": "cjt188", "bus": "line", "address": str(i),
                   "meter_type": mtype, "di_order": order, "interval": "200ms",
                   "timeout": "150ms"}, {"port": pty.path, **BUS})
        h.add({"id": "w-dead", "driver": "cjt188", "bus": "line", "address": "9",
               "interval": "200ms", "timeout": "150ms", "offline_after": 1},
              {"port": pty.path, **BUS})
        h.start()
        await h.wait_for(lambda: all(h.counts().get(f"w{i}", 0) >= 2 for i in (1, 2, 3))
                         and h.contexts["w-dead"].status.state is DeviceState.OFFLINE)
        await h.stop()
    w1, w2, w3 = (h.readings[f"w{i}"][-1] for i in (1, 2, 3))
    assert w1.measurement == "water_meter" and w1.fields["total"] == 123.45
    assert w1.fields["settlement_total"] == 100.0
    assert w2.fields["total"] == 0.005 and w2.fields["meter_time"] == "2024-03-01T12:00:01"
    assert w3.measurement == "heat_meter" and w3.fields["heat"] == 20.0
    assert h.contexts["w1"].status.counters["noise_bytes"] > 0
    assert [r[11:13] for r in sim.requests[:2]] == [b"\x90\x1f", b"\x1f\x90"]


def test_cli_read_and_address(capsys: pytest.CaptureFixture[str]) -> None:
    sim = Cjt188Bus([Meter188("12345678901234", body=water_body(
        "00012345", 0x2C, "00010000", 0x2C, "20240301120000"))])
    with PtySerial(sim) as pty:
        common = ["--port", pty.path, "--parity", "N", "--timeout", "0.5"]
        assert cli_main(["cjt188", "read", *common]) == 0
        assert capsys.readouterr().out.strip() == "12345678901234"
        assert cli_main(["cjt188", "read", *common, "--address", "12345678901234"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "123.45" in out and "2024-03-01T12:00:00" in out
