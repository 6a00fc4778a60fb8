"""Fuzz harness for Modbus replies (issue 10): unit 2's replies on a shared RTU line are
mangled at random while unit 1 is polled beside it.

The mangled replies include frames with hostile content and a *valid* CRC (random
function codes, byte counts, exception codes, data), besides junk, truncation and doubled
frames. The property: no driver task raises, unit 1 keeps its grid with exact values and
no problem counted, everything unit 2 emits can be stored, its problems are counted, and
once the line is clean its exact values come back. A fixed seed runs in CI; ``-m soak``
runs more seeds for longer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from drivers.modbus.tests.harness import GOOD, Line, crc16


def rtu_mangler(rng: random.Random, unit: int, state: dict[str, int]
                ) -> Callable[[str, bytes], bytes]:
    def mangle(direction: str, data: bytes) -> bytes:
        if direction != "down" or data[:1] != bytes([unit]) or not state["on"]:
            return data
        state["mangled"] += 1
        kind = rng.randrange(7)
        if kind == 0:
            return data
        if kind == 1:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))
        if kind == 2:
            return data[:rng.randrange(1, len(data))]
        if kind == 3:
            return data + data
        body = bytearray(data[:-2])
        if kind == 4:    # hostile content, valid CRC
            for _ in range(rng.randrange(1, 5)):
                body[rng.randrange(1, len(body))] = rng.randrange(256)
        elif kind == 5:  # an exception reply with any code
            body = bytearray([unit, body[1] | 0x80, rng.randrange(256)])
        else:            # another byte count and data, valid CRC
            count = rng.randrange(0, 12)
            body = bytearray([unit, body[1], count]) + bytes(
                rng.randrange(256) for _ in range(count))
        return bytes(body) + crc16(bytes(body))

    return mangle


async def _fuzz(seed: int, rounds: int) -> None:
    state = {"on": 1, "mangled": 0}
    async with Line(rtu_mangler(random.Random(seed), 2, state)) as line:
        line.odd.reprobe_every = 3  # points a random exception 2 isolated come back soon
        await line.fleet.wait_for(lambda: state["mangled"] >= rounds, 120)
        state["on"] = 0
        mark = len(line.fleet.readings["u2"])
        try:
            await line.fleet.wait_for(lambda: any(
                dict(r.fields) == GOOD[2] for r in line.fleet.readings["u2"][mark:]), 60)
        except TimeoutError:
            raise AssertionError(f"unit 2 never came back: {line.odd.ctx.status}, bad "
                                 f"{line.odd.plan.bad}, last "
                                 f"{line.fleet.readings['u2'][-1:]}") from None
    odd = line.odd.ctx.status
    assert sum(odd.counters.values()) > 0, "the hostile replies were counted on unit 2"
    for reading in line.fleet.readings["u2"]:
        assert reading.fields and all(
            type(v) in (bool, int, str) or (type(v) is float and math.isfinite(v))
            for v in reading.fields.values()), reading
    line.assert_healthy_kept_its_schedule()


async def test_hostile_replies_cost_only_that_unit() -> None:
    await _fuzz(seed=3, rounds=60)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(10))
async def test_hostile_replies_cost_only_that_unit_long(seed: int) -> None:
    await _fuzz(seed, rounds=600)



def test_fast_register_decode_matches_pymodbus() -> None:
    """The one-struct-call register decode (client.py) accepts and rejects exactly what
    pymodbus's own decode does, with the same registers (fixed seed, 2000 byte strings:
    byte counts below, at and past the data, odd and even)."""
    from pymodbus.exceptions import ModbusIOException
    from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

    from drivers.modbus.client import _HoldingReply

    rng = random.Random(11)
    rejected = 0
    for _ in range(2000):
        body = rng.randbytes(rng.randrange(0, 260))
        size = rng.choice([len(body), len(body) - 1, len(body) + 1, rng.randrange(256)])
        data = bytes([max(0, min(255, size))]) + body
        theirs, ours = ReadHoldingRegistersResponse(), _HoldingReply()
        try:
            theirs.decode(data)
        except ModbusIOException:
            rejected += 1
            with pytest.raises(ModbusIOException):
                ours.decode(data)
            continue
        ours.decode(data)
        assert ours.registers == theirs.registers
    assert 0 < rejected < 2000
