"""serial_line: framing and parsing over a pty, noise between records, bad input counted."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from drivers.serial_line.config import Framing
from drivers.serial_line.framer import Framer
from drivers.serial_line.sim import CardReader
from drivers.serialbus.sim import PtySerial, StreamDevice
from gateway.driver import DeviceState
from tests.serial_harness import Harness

CASES = sorted(p for p in (Path(__file__).parent.parent / "drivers/serial_line/testcases")
               .iterdir() if p.is_dir())


class Silent(StreamDevice):
    """A reader never answers; the test writes its records into the pty."""

    def take_frame(self) -> bytes | None:
        self.buffer.clear()
        return None


def reader(dev_id: str, path: str, **keys: object) -> dict:
    return {"id": dev_id, "driver": "serial_line", "port": path, **keys}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_recorded_streams(case: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = json.loads((case / "config.json").read_text())
    stream = bytes.fromhex((case / "stream.hex").read_text())
    expected = json.loads((case / "expected.json").read_text())
    with PtySerial(Silent()) as pty, caplog.at_level(logging.DEBUG):
        h = Harness()
        h.add(reader("rd", pty.path, **config))
        h.start()
        await h.wait_for(lambda: h.contexts["rd"].status.state is DeviceState.ONLINE)
        for i in range(0, len(stream), 7):  # arrives in pieces, records split across reads
            pty.write(stream[i:i + 7])
        await h.wait_for(lambda: len(h.readings.get("rd", [])) >= len(expected["records"])
                         and all(h.contexts["rd"].status.counters.get(k, 0) >= v
                                 for k, v in expected["counters"].items()))
        await h.stop()
    got = [{"tags": dict(r.tags), "fields": dict(r.fields)} for r in h.readings["rd"]]
    assert got == expected["records"]
    counters = h.contexts["rd"].status.counters
    assert {k: counters.get(k, 0) for k in expected["counters"]} == expected["counters"]
    for record in expected["records"]:  # values never reach the log
        for value in [*record["tags"].values(), *record["fields"].values()]:
            if len(str(value)) >= 4:  # shorter ones ("IN") occur in ordinary words
                assert str(value) not in caplog.text


def framer(**keys: object) -> Framer:
    return Framer(Framing.model_validate(keys))


def test_oversized_line_is_dropped_and_stream_recovers() -> None:
    f = framer(delimiter="0A", max_length=10)
    assert f.feed(b"short\n" + b"x" * 30) == [b"short"]
    assert f.feed(b"y" * 30) == []
    assert f.feed(b"zz\nok\n") == [b"ok"]
    assert f.problems["oversized"] == 1
    assert len(f.buf) < 20


def test_fixed_length_and_idle_reset() -> None:
    f = framer(mode="fixed", length=4)
    assert f.feed(b"abcdef") == [b"abcd"]
    f.idle()
    assert f.problems["truncated"] == 1
    assert f.feed(b"1234") == [b"1234"]


def test_start_end_with_multibyte_markers() -> None:
    f = framer(mode="start_end", start="AA55", end="0D0A", max_length=8)
    assert f.feed(b"\x00AA\xaa") == []
    assert f.feed(b"\x55hello\r\n\xaa\x55") == [b"hello"]
    assert f.feed(b"0123456789abcdef\r\n") == []
    assert f.problems["oversized"] == 1


async def test_text_encoding_gbk_and_bad_bytes() -> None:
    with PtySerial(Silent()) as pty:
        h = Harness()
        h.add(reader("gbk", pty.path, encoding="gbk",
                     pattern=r"^(?P<name>\w+),(?P<n>\d+)$", types={"n": "int"}))
        h.start()
        await h.wait_for(lambda: h.contexts["gbk"].status.state is DeviceState.ONLINE)
        pty.write("张三,7\n".encode("gbk") + b"\xff\xfe,1\n" + b"abc,x\n")
        await h.wait_for(lambda: len(h.readings.get("gbk", [])) >= 1
                         and h.contexts["gbk"].status.counters.get("decode_error", 0) >= 1)
        await h.stop()
    assert h.readings["gbk"][0].fields == {"name": "张三", "n": 7}
    assert h.contexts["gbk"].status.counters.get("no_match", 0) == 1


async def test_missing_port_is_offline_and_retried() -> None:
    h = Harness()
    h.add(reader("flaky", "/dev/does-not-exist-iotgw", pattern=r"(?P<x>\d+)",
                 reconnect_max=0.2))
    h.start()
    await h.wait_for(lambda: h.contexts["flaky"].status.counters.get("no_connection", 0) >= 3)
    await h.stop()
    assert h.contexts["flaky"].status.state is DeviceState.OFFLINE


async def test_card_reader_simulator_records_are_parsed() -> None:
    """The demo's gate reader (drivers/serial_line/sim.py) read by the driver with the
    demo's pattern: every swipe it printed becomes one reading, card and direction intact."""
    cards = ["0004123456", "0007765432"]
    sim = CardReader(cards, every=0.05)
    swiping = asyncio.create_task(sim.run())
    try:
        h = Harness()
        h.add(reader("gate", sim.path, framing={"mode": "delimiter", "delimiter": "0D0A"},
                     pattern=r"^CARD:(?P<card>\d+);DIR:(?P<direction>IN|OUT)$",
                     tag_groups=["direction"], types={"card": "str"}))
        h.start()
        await h.wait_for(lambda: len(h.readings.get("gate", [])) >= 5)
        await h.stop()
    finally:
        swiping.cancel()
        await asyncio.gather(swiping, return_exceptions=True)
        sim.close()
    got = h.readings["gate"]
    assert all(r.fields["card"] in cards and r.tags["direction"] in ("IN", "OUT") for r in got)
    assert len(got) <= sim.swipes
    assert h.contexts["gate"].status.counters.get("no_match", 0) == 0
