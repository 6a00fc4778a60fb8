"""The example queries in docs/schema.md, run against real stores.

Data is written through the gateway's own sinks in the shape the drivers produce, then
the ```influxql blocks run on InfluxDB 1.x and the ```promql blocks on VictoriaMetrics,
and the answers are checked. The governance queries (passages, devices, alarms) are
tests/test_governance_queries.py's.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from gateway.lineprotocol import encode_many
from gateway.reading import Reading
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
from gateway.sinks.influxdb1 import InfluxDB1Sink, InfluxDB1SinkConfig
from tests.support.servers import InfluxDB1, VictoriaMetrics

DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
BLOCK = re.compile(r"<!-- query: (\w+) -->\n```(\w+)\n(.*?)\n```", re.S)
HOUR = 3600 * 10**9


def documented(language: str) -> dict[str, str]:
    return {name: text for name, lang, text in BLOCK.findall(DOC.read_text()) if lang == language}


def compound_readings(site: str) -> list[Reading]:
    """A day of a small compound: hourly meter readings and plate sightings (passages at
    gates are tests/test_governance_queries.py's)."""
    now = (time.time_ns() // HOUR) * HOUR
    base = {"site": site, "gateway": "gw-q"}
    out: list[Reading] = []
    meters = [("b1-m1", "1", 100.0, 0.5), ("b1-m2", "1", 50.0, 0.25), ("b2-m1", "2", 7.0, 1.0)]
    for hour in range(1, 21):
        t = now - (21 - hour) * HOUR
        for device, building, start, per_hour in meters:
            out.append(Reading("energy_meter", {**base, "device": device, "building": building},
                               {"energy_total": start + per_hour * hour,
                                "power_total": 1000.0 * per_hour}, t))
        out.append(Reading("water_meter", {**base, "device": "b2-w1", "building": "2"},
                           {"total": 10.0 + 0.125 * hour}, t))
        out.append(Reading("vehicle_event", {**base, "device": "cam-east"},
                           {"plate": "a1b2c3d4e5f60718", "confidence": 0.9}, t + 10**9))
    return out


@pytest.fixture(scope="module")
def site() -> str:
    return f"q{uuid.uuid4().hex[:8]}"


async def test_influxql_examples(influx1: InfluxDB1, site: str) -> None:
    db = f"schema_{site}"
    influx1.create_database(db)
    sink = InfluxDB1Sink(InfluxDB1SinkConfig(type="influxdb1", url=influx1.url, database=db))
    await sink.open()
    await sink.write(b"\n".join(encode_many(compound_readings(site))))
    await sink.close()
    queries = documented("influxql")

    def rows(name: str) -> list[dict]:
        return influx1.select(queries[name], db)

    energy = {r["building"]: r["kwh"] for r in rows("energy_per_building")}
    assert energy == {"1": pytest.approx(19 * 0.75), "2": pytest.approx(19 * 1.0)}
    assert [(r["building"], r["m3"]) for r in rows("water_per_building")] == \
        [("2", pytest.approx(19 * 0.125))]
    assert [(r["device"], r["count"]) for r in rows("plate_events_per_camera")] == \
        [("cam-east", 20)]
    latest = {r["device"]: r["last"] for r in rows("latest_power")}
    assert latest == {"b1-m1": 500.0, "b1-m2": 250.0}


async def test_promql_examples(victoria: VictoriaMetrics, site: str) -> None:
    sink = InfluxDBSink(InfluxDBSinkConfig(type="influxdb", url=victoria.url, bucket="b",
                                           token="t"))
    await sink.open()
    await sink.write(b"\n".join(encode_many(compound_readings(site))))
    await sink.close()
    queries = documented("promql")

    def result(name: str) -> dict[str, float]:
        """Run the documented query restricted to this test's site (the store is shared)."""
        query = re.sub(r"(\b[a-z_]+_(?:energy_total|power_total|total))\[1d\]",
                       rf'\1{{site="{site}"}}[1d]', queries[name])
        data = victoria.query(query)["data"]["result"]
        return {next(iter(r["metric"].values()), ""): float(r["value"][1]) for r in data}

    assert result("energy_per_building") == {"1": pytest.approx(19 * 0.75),
                                             "2": pytest.approx(19.0)}
    assert result("power_per_building") == {"1": 750.0, "2": 1000.0}
    assert result("water_per_building") == {"2": pytest.approx(19 * 0.125)}
