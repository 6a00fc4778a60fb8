"""Readings/s of gateway.lineprotocol.encode_many against influxdb_client.Point.

Run: ``.venv/bin/python bench/bench_lineprotocol.py [N]``. The reading shape is a
typical energy meter (5 tags, 6 float fields, 1 int counter) from 50 devices, so the tag
cache sees the hit rate it would in service rather than a single hot entry.

Two value sets, because the encoder caches float text: "meter" values are fixed-point
register values scaled to engineering units (what Modbus/serial meters actually deliver,
so values recur), "unique" values are full-precision random floats that never repeat
(the float cache's worst case). Best of several rounds, to damp scheduler noise.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from influxdb_client import Point, WritePrecision

from gateway.lineprotocol import encode, encode_many
from gateway.reading import Reading

ROUNDS = 5
FLOAT_FIELDS = ("voltage_l1", "voltage_l2", "voltage_l3", "current", "power_kw", "power_factor")


def make_readings(n: int, quantised: bool, devices: int = 50) -> list[Reading]:
    rng = random.Random(42)
    tag_sets = [
        {
            "site": "compound-north",
            "gateway": "gw-01",
            "device": f"meter-{d:03d}",
            "building": f"B{d % 7}",
            "unit": f"apt {d}",
        }
        for d in range(devices)
    ]
    t0 = 1_700_000_000_000_000_000
    out = []
    for i in range(n):
        if quantised:  # raw register * scale, as a meter driver produces them
            floats = [
                rng.randint(22500, 23500) * 0.01,  # V, 0.01 V resolution
                rng.randint(22500, 23500) * 0.01,
                rng.randint(22500, 23500) * 0.01,
                rng.randint(0, 4000) * 0.01,  # A, 0.01 A
                rng.randint(0, 9000) * 0.001,  # kW, 1 W
                rng.randint(800, 1000) * 0.001,  # power factor
            ]
        else:
            floats = [rng.uniform(225.0, 235.0) for _ in range(3)] + [
                rng.uniform(0.0, 40.0),
                rng.uniform(0.0, 9.0),
                rng.uniform(0.8, 1.0),
            ]
        fields: dict[str, float | int] = dict(zip(FLOAT_FIELDS, floats, strict=True))
        fields["energy_wh"] = 10_000_000 + i
        out.append(Reading("energy_meter", tag_sets[i % devices], fields, t0 + i * 1_000_000))
    return out


def via_point(readings: list[Reading]) -> list[bytes]:
    out = []
    for r in readings:
        p = Point(r.measurement)
        for k, tag in r.tags.items():
            p.tag(k, tag)
        for k, v in r.fields.items():
            p.field(k, v)
        p.time(r.time_ns, WritePrecision.NS)
        out.append(p.to_line_protocol().encode())
    return out


def via_encode(readings: list[Reading]) -> list[bytes]:
    return [encode(r) for r in readings]


def best_rate(fn: Callable[[list[Reading]], list[bytes]], readings: list[Reading]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn(readings)
        best = min(best, time.perf_counter() - start)
    return len(readings) / best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    for label, quantised in (("meter values", True), ("unique floats", False)):
        readings = make_readings(n, quantised)
        assert encode_many(readings[:1000]) == via_point(readings[:1000])
        print(f"{label}: {n} readings, ~{len(encode(readings[0]))} bytes/line, best of {ROUNDS}")
        results = [
            ("Point.to_line_protocol", best_rate(via_point, readings)),
            ("[encode(r) for r]", best_rate(via_encode, readings)),
            ("encode_many", best_rate(encode_many, readings)),
        ]
        baseline = results[0][1]
        for name, rate in results:
            print(f"  {name:24s} {rate:12,.0f} readings/s  {rate / baseline:5.1f}x")


if __name__ == "__main__":
    main()
