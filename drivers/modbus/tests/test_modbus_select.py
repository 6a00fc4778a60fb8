"""``select``: a device reads only the named points of its profile (issue 11's workload,
five of the SDM630's 33 points, without 28 ``enabled: false`` overrides)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.profiles import load_profile
from drivers.modbus.sim import Device, TcpSim, Units
from drivers.modbus.tests.harness import Fleet, tcp_bus
from gateway.config.loader import load_config
from gateway.errors import ConfigError
from tests.support.servers import free_port

SDM630_FIVE = ("voltage_l1", "current_l1", "power_total", "frequency", "energy_import")


@pytest.fixture
async def sim() -> AsyncIterator[TcpSim]:
    device = Device()
    for i, point in enumerate(load_profile("eastron-sdm630").points):
        device.put(point, float(i + 1))
    server = TcpSim(Units({7: device}), free_port())
    await server.start()
    yield server
    await server.stop()


async def test_select_reads_the_named_points_and_overrides_still_apply(sim: TcpSim) -> None:
    profile = load_profile("eastron-sdm630")
    fleet = Fleet({"tcp": tcp_bus(sim.port)})
    driver = fleet.add(id="sdm", bus="tcp", unit=7, profile="eastron-sdm630",
                       select=list(SDM630_FIVE), overrides={"frequency": {"scale": 10}},
                       interval=0.05)
    await fleet.start()
    await fleet.wait_for(lambda: driver.cycles >= 2)
    await fleet.stop()
    assert [(r.table, r.start, r.count) for r in driver.plan.requests] == [("input", 0, 0x4A)]
    want = {p.name: float(i + 1) for i, p in enumerate(profile.points) if p.name in SDM630_FIVE}
    want["frequency"] *= 10
    assert dict(fleet.readings["sdm"][-1].fields) == want


def config_error(tmp_path: Path, devices: str) -> str:
    """The problems ``load_config`` reports for a config with this ``devices:`` block."""
    path = tmp_path / "gw.yaml"
    path.write_text("gateway: {id: gw, site: s, data_dir: data}\n"
                    "buses: {b: {type: tcp, host: 127.0.0.1}}\n"
                    "devices:\n" + devices)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return "\n".join(caught.value.problems)


@pytest.mark.parametrize(("device", "expected"), [
    ("{id: m, driver: modbus, bus: b, unit: 1, profile: eastron-sdm630, "
     "select: [voltage_l1, voltage_l9]}",
     "select names points not in profile 'eastron-sdm630': 'voltage_l9'"),
    ("{id: m, driver: modbus, bus: b, unit: 1, profile: eastron-sdm630, "
     "select: [voltage_l1], overrides: {frequency: {scale: 2}}}",
     "overrides name points not selected from profile 'eastron-sdm630': 'frequency'"),
    ("{id: m, driver: modbus, bus: b, unit: 1, points: [{name: a, address: 0}], "
     "select: [a]}",
     "select picks points of a profile: give profile too"),
    ("{id: m, driver: modbus, bus: b, unit: 1, profile: eastron-sdm630, "
     "select: [frequency, frequency]}",
     "select names a point twice"),
    ("{id: m, driver: modbus, bus: b, unit: 1, profile: eastron-sdm630, select: []}",
     "select"),
], ids=["unknown", "override-unselected", "no-profile", "twice", "empty"])
def test_a_bad_select_is_a_config_error_with_its_line(tmp_path: Path, device: str,
                                                      expected: str) -> None:
    message = config_error(tmp_path, f"  - {device}\n")
    assert "gw.yaml:4: devices[0]" in message, message
    assert expected in message, message


def block_config_error(tmp_path: Path, device_lines: str) -> str:
    """As :func:`config_error`, for one SDM630 device in block style plus ``device_lines``
    (the line numbers of its settings are then known: 9 onwards)."""
    return config_error(tmp_path, "  - id: m\n"
                                  "    driver: modbus\n"
                                  "    bus: b\n"
                                  "    unit: 1\n"
                                  "    profile: eastron-sdm630\n" + device_lines)


def test_a_select_that_leaves_no_point_is_refused(tmp_path: Path) -> None:
    """``select: [x]`` with ``overrides: {x: {enabled: false}}`` left the device without
    a point: ``iotgw check`` passed it, and the running device read nothing, logging
    "device rejected every point: " with no reason (a reload to it silently stopped the
    meter's data)."""
    message = block_config_error(
        tmp_path, "    select: [voltage_l1]\n"
                  "    overrides: {voltage_l1: {enabled: false}}\n")
    assert "gw.yaml:" in message and "devices[0]" in message, message
    assert "no points left" in message, message


def test_a_bad_select_is_reported_at_the_select_line(tmp_path: Path) -> None:
    """An unknown selected name is a problem of ``select``, at its line (it was reported
    as ``devices[0].profile`` at the profile's line)."""
    message = block_config_error(tmp_path, "    select:\n      - voltage_l1\n      - nope\n")
    assert ("gw.yaml:9: devices[0].select: select names points not in profile "
            "'eastron-sdm630': 'nope'") in message, message


def test_unknown_names_are_quoted_and_a_long_list_is_cut(tmp_path: Path) -> None:
    """An empty name stays visible, a 100 kB name and 1,000 generated names do not fill
    the error line."""
    names = ["", "a" * 100_000] + [f"p{i:04d}" for i in range(1000)]
    listed = ", ".join(repr(n) for n in names)
    message = config_error(tmp_path, "  - {id: m, driver: modbus, bus: b, unit: 1, "
                                     f"profile: eastron-sdm630, select: [{listed}]}}\n")
    assert "select names points not in profile 'eastron-sdm630': '', 'aaa" in message, message
    assert "... and 992 more" not in message  # the long name is cut, not the list's end
    assert message.endswith("and 992 more"), message[-200:]
    assert len(message) < 1000, len(message)
