"""Fault injection against real processes and servers: kill -9 and a store outage."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.buffer import read_stats
from tests.e2e import contiguous_runs, grid_index, wait_drained, write_config
from tests.gwproc import GatewayProcess
from tests.support.servers import VictoriaMetrics

KILLS = 20


@pytest.mark.slow
def test_kill_9_loses_nothing_committed(tmp_path: Path,
                                        victoria_factory: Callable[..., VictoriaMetrics]) -> None:
    """Kill -9 ``iotgw run`` at random moments under load, 20 times.

    After each kill the buffer says which reading was committed last; every one of them
    must reach the store, nothing after it may (it was never committed), each run's
    readings form one unbroken run of the synthetic grid, and resends after a restart
    collapse instead of duplicating."""
    victoria = victoria_factory()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    config = tmp_path / "gw.yaml"
    buffer_path = tmp_path / "data" / "buffer.db"
    sinks = f"- {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
    write_config(config, sinks=sinks, devices="""\
        - {id: crash-1, driver: synthetic, measurement: crash, interval: 1ms, fields: 30}
        """)
    last_committed: list[int] = []
    for _ in range(KILLS):
        gw = GatewayProcess(config).start()
        gw.wait_for_log(lambda r: "running" in r["msg"])
        time.sleep(rng.uniform(0.25, 1.5))
        gw.kill()
        stats = read_stats(buffer_path)
        if stats.newest_time_ns is not None:  # None: killed before its first commit
            last_committed.append(stats.newest_time_ns // 1_000_000)

    write_config(config, sinks=sinks)
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "running" in r["msg"])
    wait_drained(buffer_path, ["vm"])
    assert gw.stop() == 0

    (row,) = victoria.export('{__name__="crash_seq", device="crash-1"}')
    ks = [grid_index(ts, 1) for ts in row["timestamps"]]
    assert len(ks) == len(set(ks)), f"resends were duplicated (seed {seed})"
    assert row["values"] == [float(k) for k in ks]
    present = set(ks)
    kill_points = sorted(set(last_committed))
    assert len(kill_points) >= KILLS // 2, f"too few runs committed anything (seed {seed})"
    missing = [k for k in kill_points if k not in present]
    assert not missing, f"committed readings lost at kills: {missing} (seed {seed})"
    runs = contiguous_runs(sorted(ks))
    assert [last for _, last in runs] == kill_points, (
        f"gaps inside a run or readings after the last commit (seed {seed}): {runs}")


@pytest.mark.slow
def test_store_outage_buffers_and_catches_up(
        tmp_path: Path, victoria_factory: Callable[..., VictoriaMetrics]) -> None:
    """Stop VictoriaMetrics under load: the file sink keeps receiving meanwhile, and once
    the store is back every reading arrives, in order and without gaps."""
    victoria = victoria_factory()
    config = tmp_path / "gw.yaml"
    buffer_path = tmp_path / "data" / "buffer.db"
    sinks = (f"- {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
             "- {type: file, name: local}\n")
    write_config(config, sinks=sinks, devices="""\
        - {id: outage-1, driver: synthetic, measurement: outage, interval: 2ms, fields: 4}
        """)
    lines_dir = tmp_path / "data" / "lines"

    def file_count() -> int:
        return sum(p.read_bytes().count(b"\n") for p in lines_dir.glob("*.lp"))

    def file_indexes() -> list[int]:
        """Grid indexes of the readings the file sink wrote, repeats included."""
        return [grid_index(int(line.rsplit(b" ", 1)[1]) // 1_000_000, 2)
                for p in lines_dir.glob("*.lp") for line in p.read_bytes().splitlines()]

    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        time.sleep(1.0)
        victoria.stop()
        outage_started = file_count()
        gw.wait_for_log(lambda r: "sink vm unavailable" in r["msg"])
        time.sleep(3.0)
        during = read_stats(buffer_path)
        assert file_count() > outage_started + 500, "the file sink stalled with the store"
        assert during.sinks["vm"].lag_lines > 500, "readings were not held for the store"
        victoria.start()
        gw.wait_for_log(lambda r: "sink vm is delivering again" in r["msg"])
        time.sleep(0.5)
    finally:
        assert gw.stop() == 0

    write_config(config, sinks=sinks)
    drain = GatewayProcess(config).start()
    try:
        drain.wait_for_log(lambda r: "running" in r["msg"])
        wait_drained(buffer_path, ["vm", "local"])
    finally:
        assert drain.stop() == 0

    (row,) = victoria.export('{__name__="outage_seq", device="outage-1"}')
    ks = [grid_index(ts, 2) for ts in row["timestamps"]]
    assert len(ks) == len(set(ks))
    assert len(contiguous_runs(sorted(ks))) == 1, "readings lost across the outage"
    # Both sinks hold the same readings. The file sink may hold the last chunk before a
    # stop twice (written, the process gone before its acknowledgement was committed:
    # at least once); VictoriaMetrics keeps one sample per series and timestamp.
    in_file = file_indexes()
    assert set(ks) == set(in_file), "the two sinks disagree"
    assert len(in_file) - len(set(in_file)) <= 1000, "more repeats than a stop explains"
    errors = [r for r in gw.records if r["level"] == "error" and "sink vm" in r["msg"]]
    assert len(errors) == 1, "the outage should be logged once, then counted"
