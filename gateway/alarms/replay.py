"""Replaying stored readings through the engine in simulated time (``iotgw rules test``).

Readings come from a line-protocol file (what the file sink writes, or an export from the
store) or from the buffer's own history; they are sorted by time and fed one by one with
the engine's clock set to each reading's time, so a ``for: 3h`` takes no time at all to
test. The device of a reading is its ``device`` tag (the gateway adds it to every line).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from gateway.alarms.engine import Engine
from gateway.alarms.model import Transition
from gateway.reading import FieldValue, Reading


class LineError(ValueError):
    """A line that is not line protocol."""


def _split(text: str, sep: str, limit: int = -1) -> list[str]:
    """Split on ``sep`` outside backslash escapes and double quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == sep and not quoted and (limit < 0 or len(parts) < limit):
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _field(raw: str) -> FieldValue:
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return _unescape(raw[1:-1])
    if raw in ("t", "T", "true", "True", "TRUE"):
        return True
    if raw in ("f", "F", "false", "False", "FALSE"):
        return False
    if raw.endswith(("i", "u")):
        return int(raw[:-1])
    return float(raw)


def parse_line(line: str) -> Reading:
    """One line of InfluxDB line protocol (with a nanosecond timestamp)."""
    parts = _split(line.strip(), " ")
    parts = [p for p in parts if p]
    if len(parts) != 3:
        raise LineError("expected 'measurement,tags fields timestamp'")
    head, field_text, stamp = parts
    key = _split(head, ",")
    measurement = _unescape(key[0])
    tags = {}
    for pair in key[1:]:
        name, _, value = pair.partition("=")
        tags[_unescape(name)] = _unescape(value)
    fields: dict[str, FieldValue] = {}
    for pair in _split(field_text, ","):
        name, sep, value = pair.partition("=")
        if not sep:
            raise LineError(f"field without a value: {pair!r}")
        try:
            fields[_unescape(name)] = _field(value)
        except ValueError:
            raise LineError(f"bad field value {value!r}") from None
    try:
        time_ns = int(stamp)
    except ValueError:
        raise LineError(f"bad timestamp {stamp!r}") from None
    return Reading(measurement, tags, fields, time_ns)


def read_file(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip() and not line.startswith("#"):
                yield number, line


def read_buffer(path: Path) -> Iterator[tuple[int, str]]:
    """Every line still held in the buffer at ``path`` (opened read-only). OSError when
    it is no buffer or damaged (a SQLite error would end ``rules test`` in a traceback)."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        raise OSError(f"cannot read {path}: {exc}") from None
    try:
        number = 0
        for (payload,) in conn.execute("SELECT payload FROM chunks ORDER BY id"):
            for raw in bytes(payload).split(b"\n"):
                number += 1
                yield number, raw.decode("utf-8", errors="replace")
    except sqlite3.Error as exc:
        raise OSError(f"cannot read {path}: {exc}") from None
    finally:
        conn.close()


def replay(engine: Engine, lines: Iterable[tuple[int, str]],
           errors: list[str] | None = None) -> Iterator[Transition]:
    """Feed the readings in time order; yields every transition as it happens, then the
    ones due after the last reading (timers run out to the end of their delays)."""
    readings: list[Reading] = []
    for number, line in lines:
        try:
            reading = parse_line(line)
        except LineError as exc:
            if errors is not None:
                errors.append(f"line {number}: {exc}")
            continue
        if reading.measurement != "alarm":  # the engine's own output is not an input
            readings.append(reading)
    readings.sort(key=lambda r: r.time_ns)
    start = readings[0].time_ns / 1e9 if readings else 0.0
    engine.start(start)
    for reading in readings:
        now = reading.time_ns / 1e9
        engine.advance(now)
        yield from engine.take()[0]
        engine.process(reading.tags.get("device", ""), [reading], now)
        yield from engine.take()[0]
    if readings:
        # Delays still running at the end (on-delay, off-delay) are played out; stale
        # timers would raise for every device at once, so nothing past the longest delay.
        end = readings[-1].time_ns / 1e9
        longest = max((max(r.config.for_, r.config.off_delay) for r in engine.rules.values()),
                      default=0.0)
        engine.advance(end + longest)
        yield from engine.take()[0]
