"""Fuzz harness for the serial entry points (issue 10): DL/T 645 and CJ/T 188 meters on a
pty bus whose replies are mangled at random, and serial_line readers fed random streams.

Mangled replies include the dangerous kind: frames with hostile content and a *correct*
checksum (random data, lengths, control bytes, addresses), besides truncation, junk and
doubled replies. The property: the driver task never raises, every value it emits is one
the pipeline can store, problems are counted on the device, and once the line is clean
again the meter's exact values come back. A fixed seed runs in CI; ``-m soak`` runs more.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.cjt188.sim import Cjt188Bus, Meter188, water_body
from drivers.dlt645.sim import Dlt645Bus
from drivers.serial_line.config import SerialLineConfig
from drivers.serial_line.parse import Parsed, RecordError, parser_for
from drivers.serialbus.sim import PtySerial, cs
from gateway.reading import Reading
from tests.serial_harness import Harness
from tests.support.serial import BUS, simple_meter

CASES = Path(__file__).parent.parent / "drivers/serial_line/testcases"


def mangle(rng: random.Random, reply: bytes, start_byte: int = 0x68) -> bytes:
    """One reply as a noisy or hostile line would deliver it."""
    if not reply:
        return reply
    first = reply.find(start_byte)
    frame = reply[first:] if first >= 0 else reply
    kind = rng.randrange(7)
    if kind == 0:
        return reply
    if kind == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if kind == 2:
        return reply[:rng.randrange(len(reply))]
    if kind == 3:
        return reply + reply
    body = bytearray(frame[:-2])
    if kind == 4:      # hostile content, valid checksum
        for _ in range(rng.randrange(1, 6)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    elif kind == 5:    # another length, valid checksum
        length_at = 9 if body[7:8] == b"\x68" else 10
        keep = rng.randrange(0, 40)
        body = body[:length_at] + bytes([keep]) + bytes(rng.randrange(256) for _ in range(keep))
    else:              # another control byte (error replies, other functions)
        control_at = 8 if body[7:8] == b"\x68" else 9
        body[control_at] = rng.choice([0xC1, 0xD1, 0x91, 0xB1, 0x81, 0x00, 0xFF])
    return bytes(body) + bytes([cs(bytes(body)), 0x16])


class Mangling:
    """What :func:`hostile` adds to a simulator."""

    mangling = True
    mangled = 0


def hostile(bus_class: type[Dlt645Bus | Cjt188Bus], rng: random.Random) -> type:
    """The simulator class, answering through :func:`mangle` while ``mangling``."""

    # [misc, valid-type]: a base chosen at run time, which mypy cannot check statically
    class Hostile(Mangling, bus_class):  # type: ignore[misc, valid-type]

        def answer(self, frame: bytes) -> bytes:
            reply = super().answer(frame)
            if self.mangling:
                self.mangled += 1
                return mangle(rng, reply)
            return reply

    return Hostile


def storable(reading: Reading) -> bool:
    return bool(reading.fields) and all(
        type(v) in (bool, int, str) or (type(v) is float and math.isfinite(v))
        for v in reading.fields.values())


async def _survives(bus: Dlt645Bus | Cjt188Bus, device: dict, good: dict, rounds: int
                    ) -> None:
    """``bus`` is a Hostile simulator; ``good`` the fields (a subset) of a clean reply."""
    assert isinstance(bus, Mangling), "made by hostile()"
    dev = device["id"]
    with PtySerial(bus) as pty:
        h = Harness()
        h.add(device, {"port": pty.path, **BUS})
        h.start()
        # hang guards only; a mangled round can cost a timeout plus the device's backoff
        await h.wait_for(lambda: bus.mangled >= rounds, within=max(60.0, rounds * 0.5))
        bus.mangling = False
        await h.wait_for(lambda: any(good.items() <= r.fields.items()
                                     for r in h.readings.get(dev, [])[-3:]), within=30)
        await h.stop()  # raises if the driver crashed
    counters = h.contexts[dev].status.counters
    assert sum(counters.values()) > 0, "the hostile replies were counted"
    assert all(storable(r) for r in h.readings[dev]), [
        r for r in h.readings[dev] if not storable(r)][:3]


DLT645_DEVICE = {"id": "m-fuzz", "driver": "dlt645", "bus": "line", "address": "1",
                 "interval": "50ms", "timeout": "100ms", "backoff_max": "200ms"}
CJT188_DEVICE = {"id": "w-fuzz", "driver": "cjt188", "bus": "line", "address": "1",
                 "meter_type": "cold_water", "interval": "50ms", "timeout": "100ms",
                 "backoff_max": "200ms"}


async def _dlt645(seed: int, rounds: int) -> None:
    bus = hostile(Dlt645Bus, random.Random(seed))([simple_meter("000000000001")])
    await _survives(bus, DLT645_DEVICE, {"energy_total": 123.45, "voltage_a": 220.0,
                                         "current_a": -0.5, "power_total": 0.011}, rounds)


async def _cjt188(seed: int, rounds: int) -> None:
    meter = Meter188("00000000000001", body=water_body("00012345", 0x2C, "00010000", 0x2C,
                                                       "20240301120000"))
    bus = hostile(Cjt188Bus, random.Random(seed))([meter])
    await _survives(bus, CJT188_DEVICE, {"total": 123.45, "settlement_total": 100.0,
                                         "meter_time": "2024-03-01T12:00:00"}, rounds)


async def test_dlt645_survives_a_hostile_line() -> None:
    await _dlt645(seed=645, rounds=60)


async def test_cjt188_survives_a_hostile_line() -> None:
    await _cjt188(seed=188, rounds=60)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(10))
async def test_serial_meters_survive_a_hostile_line_long(seed: int) -> None:
    await _dlt645(seed, rounds=600)
    await _cjt188(seed, rounds=600)


# -- serial_line readers: the record parser on anything a line can carry ----------------

def _parsers() -> list[tuple[str, Callable[[bytes], Parsed]]]:
    import json

    out = []
    for case in sorted(p for p in CASES.iterdir() if p.is_dir()):
        config = json.loads((case / "config.json").read_text())
        cfg = SerialLineConfig.model_validate(
            {"id": "rd", "driver": "serial_line", "port": "/dev/null", **config})
        out.append((case.name, parser_for(cfg)))
    return out


def _parse_all(records: list[bytes]) -> None:
    for _name, parse in _parsers():
        for record in records:
            try:
                parsed = parse(record)
            except RecordError as exc:
                assert exc.kind, "every refusal has a counter name"
                continue
            assert parsed is not None


RECORDS = st.lists(st.one_of(
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(lambda n, d, w: f"CARD:{n};DIR:{d};W:{w}".encode(), st.integers(-10, 10**30),
              st.sampled_from(["IN", "OUT", "in", ""]), st.text(max_size=8)),
    st.builds(lambda b: b"\xa1" + b, st.binary(min_size=0, max_size=8)),
), max_size=30)


@settings(max_examples=300, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(RECORDS)
def test_serial_line_parsers_refuse_only_with_a_reason(records: list[bytes]) -> None:
    _parse_all(records)


@pytest.mark.soak
@settings(max_examples=20_000, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(RECORDS)
def test_serial_line_parsers_refuse_only_with_a_reason_long(records: list[bytes]) -> None:
    _parse_all(records)
