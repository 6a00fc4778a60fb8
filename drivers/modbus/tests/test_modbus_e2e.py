"""pymodbus TCP server -> real ``iotgw run`` -> VictoriaMetrics: decoded values exact."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from drivers.modbus.sim import ServerThread, TcpSim, Units
from drivers.modbus.tests.harness import layout
from tests.e2e import wait_drained, write_config
from tests.gwproc import GatewayProcess
from tests.support.servers import VictoriaMetrics, free_port


def test_modbus_tcp_into_victoriametrics(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    points, device, expected = layout()
    port = free_port()

    async def setup() -> Callable[[], Awaitable[None]]:
        server = await TcpSim(Units({9: device}), port).start()
        return server.stop

    config = tmp_path / "gw.yaml"
    sinks = f"- {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
    with ServerThread(setup):
        write_config(config, sinks=sinks, devices=f"""\
            - {{id: e2e-modbus-1, driver: modbus, bus: plc, unit: 9, interval: 100ms,
               measurement: e2e_modbus, tags: {{building: "9"}},
               points: {json.dumps(points)}}}
            """)
        bus = f"buses:\n  plc: {{type: tcp, host: 127.0.0.1, port: {port}}}\n"
        text = config.read_text().replace("devices:\n", bus + "devices:\n")
        config.write_text(text)
        gw = GatewayProcess(config).start()
        try:
            gw.wait_for_log(lambda r: "running" in r["msg"])
            time.sleep(1.5)
        finally:
            assert gw.stop() == 0
    write_config(config, sinks=sinks)
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        wait_drained(config.parent / "data" / "buffer.db", ["vm"])
    finally:
        assert gw.stop() == 0

    rows = victoria.export('{__name__=~"e2e_modbus_.*", device="e2e-modbus-1"}')
    by_field = {r["metric"]["__name__"].removeprefix("e2e_modbus_"): r for r in rows}
    numeric = {k: v for k, v in expected.items() if not isinstance(v, str)}
    assert set(numeric) <= set(by_field), sorted(set(numeric) - set(by_field))
    for name, value in numeric.items():
        values = by_field[name]["values"]
        assert len(values) >= 5
        # VictoriaMetrics keeps ~12 significant decimal digits (123.45600128173828 comes
        # back as 123.4560012817); the decoded values themselves are checked bit-exact in
        # test_modbus_tcp.py.
        assert isinstance(value, int | float)
        assert all(v == pytest.approx(float(value), rel=1e-11) for v in values), (
            name, values[:3], value)
    assert by_field["f32_cdab"]["metric"]["building"] == "9"
