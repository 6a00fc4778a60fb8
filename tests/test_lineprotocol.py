"""Hold gateway.lineprotocol to influxdb_client.Point's exact bytes.

The encoder exists only to be a faster Point; any byte of difference is a bug, so the
property test compares against the installed client rather than against our own reading
of the line-protocol spec.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Mapping
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from gateway import lineprotocol
from gateway.lineprotocol import encode, encode_many
from gateway.reading import Reading

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def point_bytes(reading: Reading) -> bytes:
    """The reference: what influxdb_client would write for this reading."""
    point = Point(reading.measurement)
    for key, tag in reading.tags.items():
        point.tag(key, tag)
    for key, value in reading.fields.items():
        point.field(key, value)
    point.time(reading.time_ns, WritePrecision.NS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # '#measurement'; tested separately
        return point.to_line_protocol().encode()


# Characters that line protocol treats specially, plus some that merely tend to break
# naive encoders (multi-byte UTF-8, emoji, combining marks, NUL).
NASTY = ",= \"'\\\n\r\t#\x00é€😀\u0301\u00a0"
# Surrogates are the one exclusion: they cannot be UTF-8 encoded, so Point's line can't
# be turned into bytes either.
nasty_text = st.text(
    alphabet=st.one_of(st.sampled_from(NASTY), st.characters(exclude_categories=["Cs"])),
    max_size=12,
)
# String field values without line breaks: those are the one place this encoder differs
# from Point on purpose (escaped, see gateway/lineprotocol.py and the test below).
field_text = st.text(
    alphabet=st.one_of(st.sampled_from(NASTY.replace("\n", "").replace("\r", "")),
                       st.characters(exclude_categories=["Cs"], exclude_characters="\n\r")),
    max_size=12,
)
field_values = st.one_of(
    # NaN and +-inf included on purpose: both sides must drop the field.
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            0.0,
            -0.0,
            1.0,
            -1.0,
            1e-7,
            1e15,
            1e16,
            1e21,
            1e22,
            2.0**53,
            2.0**63,
            5e-324,
            1.7976931348623157e308,
            0.1 + 0.2,
        ]
    ),
    st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
    st.sampled_from([INT64_MIN, INT64_MAX, 0, -1]),
    st.booleans(),
    field_text,
)
readings = st.builds(
    Reading,
    measurement=nasty_text,
    tags=st.dictionaries(nasty_text, nasty_text, max_size=6),
    fields=st.dictionaries(nasty_text, field_values, max_size=8),
    time_ns=st.integers(min_value=INT64_MIN, max_value=INT64_MAX),
)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(readings)
def test_encode_matches_point(reading: Reading) -> None:
    assert encode(reading) == point_bytes(reading)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings, max_size=6), st.integers(min_value=1, max_value=4))
def test_encode_many_matches_point(batch: list[Reading], repeat: int) -> None:
    # Repeats make later copies hit the caches the first copy filled.
    batch = batch * repeat
    assert encode_many(batch) == [point_bytes(r) for r in batch]
    assert encode_many(iter(batch)) == [encode(r) for r in batch]


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@given(st.lists(st.builds(Reading, measurement=nasty_text,
                          tags=st.dictionaries(nasty_text, nasty_text, max_size=3),
                          fields=st.dictionaries(nasty_text, nasty_text, min_size=1, max_size=3),
                          time_ns=st.integers(0, INT64_MAX)), max_size=5))
def test_no_line_ever_holds_a_raw_line_break(batch: list[Reading]) -> None:
    """VictoriaMetrics drops a whole reading whose string field holds a raw newline (and
    answers 204); the buffer, the forwarder's bisection and the file sink split on it."""
    for line in encode_many(batch):
        assert b"\n" not in line and b"\r" not in line


class Phase(enum.IntEnum):
    L1 = 1


class Mode(str, enum.Enum):  # noqa: UP042 -- str() is "Mode.AUTO", unlike StrEnum
    AUTO = "auto"


T = 1_700_000_000_123_456_789

WORKED = [
    # (measurement, tags, fields, expected line)
    ("m", {}, {"v": 1.0}, f"m v=1 {T}"),
    ("m", {"b": "2", "a": "1"}, {"z": 1, "y": 2.5}, f"m,a=1,b=2 y=2.5,z=1i {T}"),
    ("m", {}, {"on": True, "off": False, "n": -3}, f"m n=-3i,off=false,on=true {T}"),
    (
        "m",
        {},
        {"v": -0.0, "w": 1e-7, "x": 1e21, "y": 1e16, "z": 2.0**53},
        f"m v=-0,w=1e-07,x=1e+21,y=1e+16,z=9007199254740992 {T}",
    ),
    ("m", {}, {"i": INT64_MAX, "j": INT64_MIN}, f"m i={INT64_MAX}i,j={INT64_MIN}i {T}"),
    # measurement escapes comma and space but not '='; nobody escapes backslash
    ("my meas,x=y\\", {}, {"v": 1}, f"my\\ meas\\,x=y\\ v=1i {T}"),
    ("m", {"k ey": "v,a=l ue"}, {"f=k,ey": 1}, f"m,k\\ ey=v\\,a\\=l\\ ue f\\=k\\,ey=1i {T}"),
    # newline, CR, tab escaped in names/tags; newline and CR in string fields too (not Point)
    (
        "a\nb",
        {"t\tk": "v\rv"},
        {"s": 'say "hi"\\\nbye\r'},
        f'a\\nb,t\\tk=v\\rv s="say \\"hi\\"\\\\\\nbye\\r" {T}',
    ),
    # trailing backslash in a tag value gets a space (escaped space) appended
    ("m", {"path": "C:\\"}, {"v": 1}, f"m,path=C:\\  v=1i {T}"),
    # empty tag key/value and None tag value are dropped; None/NaN/inf fields dropped
    (
        "m",
        {"": "x", "e": "", "n": None, "ok": "1"},
        {"a": None, "b": float("nan"), "c": float("-inf"), "d": 2},
        f"m,ok=1 d=2i {T}",
    ),
    ("m", {"t": "v"}, {"nan": float("nan")}, ""),
    ("m", {}, {}, ""),
    ("é😀", {"ü": "€"}, {"ß": "😀"}, f'é😀,ü=€ ß="😀" {T}'),
    # non-exact types go through Point's isinstance rules
    (
        "m",
        {},
        {"p": Phase.L1, "d": Decimal("2.50"), "e": Decimal("3.0"), "s": Mode.AUTO},
        f'm d=2.50,e=3,p=1i,s="Mode.AUTO" {T}',
    ),
]


@pytest.mark.parametrize(("measurement", "tags", "fields", "expected"), WORKED)
def test_worked_examples(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, object], expected: str
) -> None:
    # [arg-type]: some worked examples are Decimal and Enum values, outside FieldValue on
    # purpose (they must encode as influxdb_client.Point encodes them)
    reading = Reading(measurement, tags, fields, T)  # type: ignore[arg-type]
    assert encode(reading) == expected.encode()
    assert encode_many([reading, reading]) == [expected.encode()] * 2
    raw_break = any(isinstance(v, str) and ("\n" in v or "\r" in v) for v in fields.values())
    if not raw_break:  # where we differ from Point on purpose
        assert point_bytes(reading) == expected.encode()


def test_hash_measurement_warns_like_point() -> None:
    reading = Reading("#not-a-comment", {"only": "here"}, {"v": 1}, T)
    with pytest.warns(SyntaxWarning):
        assert encode(reading) == point_bytes(reading)


def test_unsupported_field_type_raises_like_point() -> None:
    reading = Reading("m", {}, {"v": [1]}, T)  # type: ignore[dict-item]  # bad on purpose
    with pytest.raises(ValueError):
        encode(reading)
    with pytest.raises(ValueError):
        point_bytes(reading)


def test_unhashable_tag_value_still_encodes() -> None:
    reading = Reading("m", {"t": ["a"]}, {"v": 1}, T)  # type: ignore[dict-item]  # bad on purpose
    assert encode(reading) == encode_many([reading])[0] == point_bytes(reading)


def test_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lineprotocol, "_CACHE_MAX", 4)
    monkeypatch.setattr(lineprotocol, "_FLOAT_CACHE_MAX", 4)
    batch = [Reading("m", {"dev": str(i)}, {f"f{i}": i, "x": i / 3}, T) for i in range(20)]
    assert encode_many(batch) == [point_bytes(r) for r in batch]
    assert [encode(r) for r in batch] == [point_bytes(r) for r in batch]
    assert len(lineprotocol._prefix_cache) <= 4
    assert len(lineprotocol._fields_cache) <= 4
    assert len(lineprotocol._float_cache) <= 4


def test_float_cache_keeps_signed_zeros_apart() -> None:
    # 0.0 == -0.0 and they hash alike, so a naive float->text cache would alias them.
    batch = [Reading("m", {}, {"v": v}, T) for v in (0.0, -0.0, 0.0, 1.5, -1.5, 1.5, -0.0)]
    assert encode_many(batch) == [point_bytes(r) for r in batch]
    assert encode(batch[1]) == f"m v=-0 {T}".encode()
