"""synthetic -> buffer -> real stores, through the real ``iotgw run`` process."""

from __future__ import annotations

import time
from pathlib import Path

from drivers.synthetic.driver import field_values
from tests.e2e import contiguous_runs, grid_index, wait_drained, write_config
from tests.gwproc import GatewayProcess
from tests.support.servers import InfluxDB1, VictoriaMetrics


def run_for(config: Path, seconds: float) -> GatewayProcess:
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "running" in r["msg"])
    time.sleep(seconds)
    assert gw.stop() == 0
    return gw


def drain(config: Path, sinks: str, sink_names: list[str]) -> None:
    """Restart without devices until every sink has everything, then stop."""
    write_config(config, sinks=sinks)
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        wait_drained(config.parent / "data" / "buffer.db", sink_names)
    finally:
        assert gw.stop() == 0


def test_synthetic_into_victoriametrics_exact(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    config = tmp_path / "gw.yaml"
    sinks = f"- {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
    write_config(config, sinks=sinks, devices="""\
        - {id: e2e-vm-1, driver: synthetic, measurement: e2e_meter, interval: 20ms, fields: 3,
           tags: {building: "3", unit: "301"}}
        - {id: e2e-vm-2, driver: synthetic, measurement: e2e_meter, interval: 50ms, fields: 3}
        """)
    gw = run_for(config, 2.0)
    stopped = gw.wait_for_log(lambda r: r["msg"].startswith("stopped:"))
    drain(config, sinks, ["vm"])

    rows = victoria.export('{__name__=~"e2e_meter_.*"}')
    by_series = {(r["metric"]["__name__"], r["metric"]["device"]): r for r in rows}
    total = 0
    for device, interval_ms in (("e2e-vm-1", 20), ("e2e-vm-2", 50)):
        seq = by_series[("e2e_meter_seq", device)]
        ks = [grid_index(ts, interval_ms) for ts in seq["timestamps"]]
        assert len(ks) == len(set(ks)), "duplicate samples"
        assert len(contiguous_runs(sorted(ks))) == 1, "a reading is missing"
        assert seq["values"] == [float(k) for k in ks]
        for field in ("f0", "f1", "f2"):
            row = by_series[(f"e2e_meter_{field}", device)]
            expected = [field_values(grid_index(ts, interval_ms), 3)[field]
                        for ts in row["timestamps"]]
            assert row["values"] == expected
            assert row["timestamps"] == seq["timestamps"]
        total += len(ks)
    labels = by_series[("e2e_meter_f0", "e2e-vm-1")]["metric"]
    assert labels == {"__name__": "e2e_meter_f0", "site": "e2e-site", "gateway": "gw-e2e",
                      "device": "e2e-vm-1", "building": "3", "unit": "301"}
    assert total == stopped["readings_committed"]


def test_synthetic_into_influxdb1_with_strings(tmp_path: Path, influx1: InfluxDB1) -> None:
    influx1.create_database("e2e")
    config = tmp_path / "gw.yaml"
    sinks = f"- {{type: influxdb1, url: '{influx1.url}', database: e2e}}\n"
    write_config(config, sinks=sinks, devices="""\
        - {id: e2e-i1, driver: synthetic, measurement: e2e_water, interval: 50ms, fields: 2,
           text_field: true, tags: {building: "5"}}
        """)
    gw = run_for(config, 1.5)
    stopped = gw.wait_for_log(lambda r: r["msg"].startswith("stopped:"))
    drain(config, sinks, ["influxdb1"])

    points = influx1.select(
        "SELECT f0, f1, seq, status, building, site, gateway FROM e2e_water "
        "WHERE device = 'e2e-i1'", db="e2e")
    assert len(points) == stopped["readings_committed"] > 10
    for point in points:
        k = point["seq"]
        assert point == {"time": point["time"], **field_values(k, 2, text=True),
                         "building": "5", "site": "e2e-site", "gateway": "gw-e2e"}
    ks = sorted(p["seq"] for p in points)
    assert len(contiguous_runs(ks)) == 1
