"""Point decoding/encoding from data-driven register images (testcases/decode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from drivers.modbus.points import (
    NUMERIC_FORMATS,
    ORDERS,
    Point,
    changed,
    parse_address,
    reader,
)

CASES = YAML(typ="safe").load(
    (Path(__file__).parent.parent / "testcases" / "decode" / "all_types.yaml").read_text()
)["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["point"]["name"])
def test_decode_register_image(case: dict) -> None:
    point = Point.model_validate(case["point"])
    assert point.count == len(case["registers"])
    value = point.decode(case["registers"])
    assert value == case["value"]
    assert type(value) is type(case["value"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["point"]["name"])
def test_poll_path_reader_decodes_the_register_image(case: dict) -> None:
    point = Point.model_validate(case["point"])
    value = reader(point)(case["registers"])
    assert value == case["value"]
    assert type(value) is type(case["value"])


@pytest.mark.parametrize("scaling", [{}, {"scale": 0.1}, {"scale": 2, "offset": -5},
                                     {"precision": 2}], ids=str)
@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("kind", sorted(NUMERIC_FORMATS))
def test_poll_path_reader_equals_decode(kind: str, order: str, scaling: dict) -> None:
    """Every numeric type, order and scaling, on seeded random words (NaN and infinity
    among the floats' bit patterns included): the compiled reader is decode, exactly."""
    import math
    import random

    point = Point.model_validate({"name": "p", "address": 0, "type": kind, "order": order,
                                  **scaling})
    rng = random.Random(f"{kind}{order}{scaling}")
    read = reader(point)
    for _ in range(300):
        words = [rng.choice((0, 0xFFFF, 0x7F80, 0x7FC0, rng.randrange(0x10000)))
                 for _ in range(point.count)]
        want, got = point.decode(words), read(words)
        assert type(got) is type(want)
        assert got == want or (math.isnan(got) and math.isnan(want)), words


@pytest.mark.parametrize("case", [c for c in CASES if c["point"].get("type") != "bit"],
                         ids=lambda c: c["point"]["name"])
def test_encode_is_the_inverse(case: dict) -> None:
    point = Point.model_validate(case["point"])
    words = point.encode(case["value"])
    assert point.decode(words) == case["value"]
    if point.kind not in ("bool", "string") and point.scale == 1:
        assert list(words) == case["registers"]


@pytest.mark.parametrize(("text", "value"), [(16, 16), ("16", 16), ("0x0010", 16),
                                            ("0X00_FF", 255), ("  0x1  ", 1)])
def test_hex_addresses(text: object, value: int) -> None:
    assert parse_address(text) == value


@pytest.mark.parametrize("bad", [
    {"name": "x", "address": "0x10000"},
    {"name": "x", "address": "forty"},
    {"name": "x", "table": "coil", "address": 0, "type": "uint16"},
    {"name": "x", "address": 0, "type": "bit"},
    {"name": "x", "address": 0, "type": "string"},
    {"name": "x", "address": 0xFFFF, "type": "float32"},
    {"name": "x", "address": 0, "scale": 0},
    {"name": "bad name", "address": 0},
])
def test_invalid_points_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Point.model_validate(bad)


def test_encode_refuses_out_of_range_and_unrepresentable() -> None:
    with pytest.raises(ValueError, match="out of range"):
        Point(name="x", address=0, type="uint16").encode(70000)
    with pytest.raises(ValueError, match="not representable"):
        Point(name="x", address=0, type="uint16", scale=0.1).encode(1.23)
    with pytest.raises(ValueError, match="true/false"):
        Point(name="x", table="coil", address=0).encode("maybe")
    assert Point(name="x", table="coil", address=0).encode("on") == [True]


def test_on_change_with_deadband() -> None:
    point = Point(name="x", address=0, on_change=True, deadband=0.5)
    assert changed(point, None, 1.0)
    assert not changed(point, 1.0, 1.4)
    assert changed(point, 1.0, 1.6)
    assert changed(Point(name="y", address=0, on_change=True), "a", "b")
