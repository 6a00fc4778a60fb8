"""DL/T 645 codec: worked reference frames, scanner resynchronisation, value formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivers.dlt645 import frame
from drivers.dlt645.points import POINTS_1997, POINTS_2007
from drivers.dlt645.protocol import DIALECTS, explain_error, read_address_request, read_request
from drivers.serialbus.bcd import BadValue, BcdFormat
from drivers.serialbus.framing import Scan

CASES = sorted(p for p in (Path(__file__).parent.parent / "drivers/dlt645/testcases").iterdir()
               if p.is_dir())


def _hex(path: Path) -> bytes:
    return bytes.fromhex(path.read_text())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_frames(case: Path) -> None:
    expected = json.loads((case / "expected.json").read_text())
    dialect = DIALECTS[expected["protocol"]]
    request, reply = _hex(case / "request.hex"), _hex(case / "reply.hex")
    if request:
        if "point" in expected:
            point = dialect.points[expected["point"]]
            ours = read_request(dialect, expected["address"], point.di)
        else:
            ours = read_address_request()
        assert ours.lstrip(b"\xfe") == request.lstrip(b"\xfe")
        assert frame.scan(request).frame == request.lstrip(b"\xfe")
    if reply:
        scanned = frame.scan(reply)
        assert scanned.frame == reply and scanned.consumed == len(reply)
        decoded = frame.decode(reply)
        assert decoded.address == expected["address"]
        assert decoded.is_reply
        if "error" in expected:
            assert decoded.is_error and decoded.data == bytes([expected["error_byte"]])
            assert explain_error(dialect, decoded.data)[0] == expected["error"]
        else:
            point = dialect.points[expected["point"]]
            assert decoded.data[:dialect.di_size] == dialect.di_bytes(point.di)
            assert point.format.decode(decoded.data[dialect.di_size:]) == expected["value"]


REPLY = bytes.fromhex("68 12 90 78 56 34 12 68 91 08 33 33 34 33 AB 89 67 45 CC 16")


def test_scanner_skips_noise_and_preamble() -> None:
    buf = b"\x00\x11\xfe\xfe" + REPLY + b"\x68\x12"
    scan = frame.scan(buf)
    assert scan.frame == REPLY
    assert scan.junk == 2  # the FE preamble is not noise
    assert scan.consumed == 4 + len(REPLY)


def test_scanner_waits_for_truncated_frame_then_completes() -> None:
    assert frame.scan(REPLY[:9]) == Scan(None, 0, 0, 0)
    assert frame.scan(REPLY[:15]).frame is None
    assert frame.scan(REPLY).frame == REPLY


def test_scanner_rejects_bad_checksum_and_resyncs() -> None:
    corrupt = REPLY[:-2] + bytes([REPLY[-2] ^ 1, 0x16])
    scan = frame.scan(corrupt + b"\xaa" + REPLY)
    assert scan.frame == REPLY
    assert scan.bad == 1


def test_scanner_stray_start_byte_does_not_hide_a_later_frame() -> None:
    # 0x68 in the noise followed by bytes that look like a long frame in progress
    scan = frame.scan(b"\x68\x01\x02\x03\x04\x05\x06\x68\x11\xc8" + REPLY)
    assert scan.frame == REPLY


def test_scanner_truncated_frame_then_next_frame() -> None:
    truncated = REPLY[:14]
    scan = frame.scan(truncated + REPLY)
    assert scan.frame == REPLY


def test_address_bcd_low_byte_first() -> None:
    assert frame.address_bytes("123456789012") == bytes.fromhex("129078563412")
    assert frame.address_bytes("414") == bytes.fromhex("140400000000")
    with pytest.raises(frame.FrameError):
        frame.address_bytes("12345678901X")


@pytest.mark.parametrize(("fmt", "raw", "value"), [
    ("XXXXXX.XX", "78563412", 123456.78),
    ("XXX.X", "3412", 123.4),
    ("-XXX.XXX", "563412", 123.456),
    ("-XXX.XXX", "5634" "92", -123.456),
    ("-XX.XXXX", "010080", -0.0001),
    ("-X.XXX", "0089", -0.9),  # MSB 0x89: sign bit + digit 9 -> -0.900
    ("XX.XX", "0050", 50.0),
    ("XXX", "2002", 220),
    ("XXXX", "3412", 1234),
])
def test_value_formats(fmt: str, raw: str, value: float) -> None:
    assert BcdFormat.parse(fmt).decode(bytes.fromhex(raw)) == value


def test_value_format_rejects_non_bcd_and_short() -> None:
    with pytest.raises(BadValue):
        BcdFormat.parse("XX.XX").decode(b"\xff\xff")
    with pytest.raises(BadValue):
        BcdFormat.parse("XXXXXX.XX").decode(b"\x00")
    with pytest.raises(ValueError):
        BcdFormat.parse("12.3")


def test_error_bits_table() -> None:
    d = DIALECTS["2007"]
    assert explain_error(d, b"\x04")[0] == "error_password"
    assert explain_error(d, b"\x01")[0] == "error_other"
    kind, text = explain_error(d, b"\x06")
    assert kind == "error_no_data" and "password" in text
    assert explain_error(d, b"")[0] == "error_reply"


def test_tables_have_unique_dis() -> None:
    for table in (POINTS_2007, POINTS_1997):
        dis = [p.di for p in table.values()]
        assert len(dis) == len(set(dis))
