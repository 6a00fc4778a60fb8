"""InfluxDB line-protocol encoding for :class:`~gateway.reading.Reading`.

Why not just ``influxdb_client.Point``: building a ``Point`` per reading and calling
``to_line_protocol()`` is 3-5x slower than this module (object construction, two
``sorted()`` calls, re-escaping the same tag set and field keys on every reading, a
timestamp-conversion helper, ``str()`` of every float). At the >= 50k readings/s the
gateway must sustain on one core next to everything else, Point alone would eat the
whole budget (see ``bench/bench_lineprotocol.py``). Readings from one device repeat the
same measurement, tag set and field names endlessly, and meter values recur, so this
module escapes/formats those once, caches the text, and does little else per reading.

The output is meant to be *byte-for-byte* what ``Point`` produces for the same data
(``tests/test_lineprotocol.py`` holds it to that with a property test against the
installed ``influxdb_client``), so switching between the two, or comparing buffered
lines with ones the client wrote, never introduces a spurious difference. That includes
Point's quirks, listed on :func:`encode`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from decimal import Decimal
from math import isfinite
from typing import Any

from gateway.reading import Reading

__all__ = ["encode", "encode_many"]

# The same translation tables Point uses. Note that neither escapes a backslash: Point
# doesn't, so we mustn't either.
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_KEY = str.maketrans(
    {",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
# Unlike Point, a line break in a string field value is written escaped (``\n``, ``\r``):
# a raw one is legal inside quotes for InfluxDB, but VictoriaMetrics splits lines first and
# silently drops the whole reading (it answers 204), and the forwarder's bisection, the
# file sink's readers and every line-oriented tool split there too. The store keeps the
# two characters backslash-n, which reads back unambiguously enough to be seen and fixed.
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\", "\n": r"\n", "\r": r"\r"})

# Caches are plain dicts cleared wholesale when they overflow: a lookup is the hot path
# and must stay a single dict.get, which an LRU's bookkeeping would not be. A gateway
# has a bounded set of devices, so in practice they fill once and never clear; the
# bound only guards against a misbehaving driver putting e.g. a serial number in a tag.
_CACHE_MAX = 8192

# (measurement, *tag keys, *tag values) -> "measurement,k=v,k2=v2 " (with trailing space).
# A flat tuple hashes measurably faster than (measurement, tuple(tags.items())) and is
# still unambiguous: its length fixes where the keys end and the values begin.
_prefix_cache: dict[tuple[str, ...], str] = {}
# tuple(fields) (keys in mapping order) -> ((raw key, "escaped_key="), ...) in Point's order
_fields_cache: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}
# float -> its line-protocol text. repr() of a float (shortest round-trip digits) is
# the single most expensive step, ~0.5 us, and meter values are fixed-point register
# values scaled by a constant, so the same few thousand floats recur constantly; a hit
# is a dict lookup. Unique values (worst case) cost one extra insert and churn the cache.
_FLOAT_CACHE_MAX = 16384
_float_cache: dict[float, str] = {}


def _build_prefix(measurement: str, tags: Mapping[str, str]) -> str:
    """Escape measurement and tag set exactly as ``Point.to_line_protocol`` does."""
    name = str(measurement).translate(_ESCAPE_MEASUREMENT)
    if name.startswith("#"):
        # Point warns here too; we only get here on a cache miss, so it is once per
        # (measurement, tag set) rather than per reading.
        warnings.warn(
            f"The measurement name {name!r} starts with '#': InfluxDB will read the line "
            "as a comment.",
            SyntaxWarning,
            stacklevel=4,
        )
    parts = [name]
    # Point sorts the raw (unescaped) items; keys are unique, so this is a key sort.
    for key, value in sorted(tags.items()):
        if value is None:
            continue
        ekey = str(key).translate(_ESCAPE_KEY)
        evalue = str(value).translate(_ESCAPE_KEY)
        if evalue.endswith("\\"):
            # Point's guard so a trailing backslash can't escape the separator after it:
            # it appends a space, which then reads as an escaped space (part of the value).
            evalue += " "
        # Point silently drops tags whose escaped key or value is empty.
        if ekey and evalue:
            parts.append(f"{ekey}={evalue}")
    return ",".join(parts) + " "


def _prefix_for(measurement: str, tags: Mapping[str, str]) -> str:
    try:
        cache_key = (measurement, *tags, *tags.values())
        prefix = _prefix_cache.get(cache_key)
    except TypeError:  # unhashable tag value: correct, just not cacheable
        return _build_prefix(measurement, tags)
    if prefix is None:
        prefix = _build_prefix(measurement, tags)
        if len(_prefix_cache) >= _CACHE_MAX:
            _prefix_cache.clear()
        _prefix_cache[cache_key] = prefix
    return prefix


def _field_layout(fields: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    cache_key = tuple(fields)
    layout = _fields_cache.get(cache_key)
    if layout is None:
        # Point sorts by raw key (like tags); keys are unique, so a key sort suffices.
        layout = tuple((key, str(key).translate(_ESCAPE_KEY) + "=") for key in sorted(fields))
        if len(_fields_cache) >= _CACHE_MAX:
            _fields_cache.clear()
        _fields_cache[cache_key] = layout
    return layout


def _slow_value(value: object) -> str | None:
    """Format a value whose type is not exactly float/int/bool/str, the way Point does.

    Covers subclasses (IntEnum, str enums, float subclasses) and Decimal, which Point
    also accepts. Returns None where Point drops the field.
    """
    if value is None:
        return None
    if isinstance(value, (float, Decimal)):
        if not isfinite(value):
            return None
        s = str(value)
        return s[:-2] if s.endswith(".0") else s
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value!s}i"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + str(value).translate(_ESCAPE_STRING) + '"'
    raise ValueError(f'Type: "{type(value)}" of field value {value!r} is not supported.')


def encode(reading: Reading) -> bytes:
    """Encode one reading as a line of InfluxDB line protocol (UTF-8, no newline, ns time).

    Byte-identical to ``Point(measurement).tag(...)...field(...)...time(time_ns,
    WritePrecision.NS).to_line_protocol().encode()``, including Point's quirks:

    * tags and fields are emitted sorted by raw key, whatever the mapping order;
    * tags whose escaped key or value is empty, or whose value is None, are dropped;
    * a tag value ending in a backslash gets a space appended (so the line parses);
    * backslashes are *not* escaped in measurement, keys or tag values; newline, CR and
      tab are escaped there as ``\\n``, ``\\r``, ``\\t``; the measurement does not
      escape ``=``;
    * string field values escape ``"`` and ``\\``, and (unlike Point) newline and CR as
      ``\\n``/``\\r``, so no line ever holds a raw line break;
    * floats are ``repr()`` with a trailing ``.0`` removed (``1.0`` -> ``1``, ``-0.0``
      -> ``-0``, ``1e+16`` stays), ints get an ``i`` suffix, bools are ``true``/``false``;
    * fields that are None or non-finite floats (NaN, +-inf) are dropped; the core drops
      those before encoding anyway, this only mirrors Point. If no field survives, the
      result is ``b""`` (Point returns ``""``) -- skip such lines rather than writing them;
    * a measurement starting with ``#`` triggers a ``SyntaxWarning`` (InfluxDB would read
      the line as a comment), once per measurement/tag set rather than per reading.

    ``time_ns`` must be an int (nanoseconds). Keys and tag values must be ``str``, as
    :class:`Reading` declares: other types are ``str()``-ed like Point does, but the
    caches compare with ``==``, so e.g. tag values ``1`` and ``True`` would share text.
    """
    return encode_many((reading,))[0]


def encode_many(readings: Iterable[Reading]) -> list[bytes]:
    """Encode a batch: the one real implementation, with everything bound to locals.

    Returns one entry per reading, in order (``b""`` where :func:`encode` would).
    """
    out: list[bytes] = []
    out_append = out.append
    prefix_get = _prefix_cache.get
    layout_get = _fields_cache.get
    float_get = _float_cache.get
    float_cache = _float_cache
    float_max = _FLOAT_CACHE_MAX
    esc_string = _ESCAPE_STRING
    for reading in readings:
        fields = reading.fields
        layout = layout_get(tuple(fields))
        if layout is None:
            layout = _field_layout(fields)
        parts: list[str] = []
        append = parts.append
        for key, ekey in layout:
            # Any: the branches below dispatch on `t`, an alias of type(value) that mypy
            # cannot narrow through, and calling type() per branch would cost the hot loop.
            value: Any = fields[key]
            t = type(value)
            # Exact type checks: cheaper than isinstance, and keep bool (an int subclass)
            # out of the int branch. Subclasses, Decimal and None take the slow path.
            if t is float:
                s = float_get(value)
                if s is None:
                    if not isfinite(value):
                        continue
                    s = repr(value)
                    if s.endswith(".0"):
                        s = s[:-2]
                    # 0.0 == -0.0 (same hash), so zeros must never be cached: they'd
                    # alias each other. NaN/inf never get here.
                    if value:
                        if len(float_cache) >= float_max:
                            float_cache.clear()
                        float_cache[value] = s
                append(ekey + s)
            elif t is int:
                append(f"{ekey}{value}i")
            elif t is str:
                append(f'{ekey}"{value.translate(esc_string)}"')
            elif t is bool:
                append(ekey + ("true" if value else "false"))
            else:
                s = _slow_value(value)
                if s is not None:
                    append(ekey + s)
        if not parts:
            out_append(b"")
            continue
        measurement = reading.measurement
        tags = reading.tags
        try:
            prefix = prefix_get((measurement, *tags, *tags.values()))
        except TypeError:  # unhashable tag value; _prefix_for copes
            prefix = None
        if prefix is None:
            prefix = _prefix_for(measurement, tags)
        out_append(f"{prefix}{','.join(parts)} {reading.time_ns}".encode())
    return out
