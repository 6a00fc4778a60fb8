"""What libosdp events mean to the gateway, as tables.

Card reads and keypad input become readings; local status reports (tamper, power) become
device state. Values are card data: they are only ever put into readings, never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drivers.osdp.libosdp import CardFormat, Event, StatusReportType
from gateway.reading import FieldValue

KEYPAD = {0x7F: "*", 0x0D: "#"}


def card_text(event: Mapping[str, Any]) -> str:
    """Wiegand/raw bits as hex (trimmed to whole bytes of ``length`` bits); ASCII as text."""
    data: bytes = event.get("data", b"")
    if event.get("format") == CardFormat.ASCII:
        return data.decode("ascii", errors="replace")
    bits = int(event.get("length") or len(data) * 8)
    return data[:(bits + 7) // 8].hex().upper()


def keys_text(data: bytes) -> str:
    return "".join(KEYPAD.get(b) or (chr(b) if 0x30 <= b <= 0x39 else str(b)) for b in data)


def card_read(event: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, FieldValue]]:
    return ({"reader": str(event.get("reader_no", 0)), "kind": "card"},
            {"card": card_text(event), "bits": int(event.get("length") or 0)})


def key_press(event: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, FieldValue]]:
    return ({"reader": str(event.get("reader_no", 0)), "kind": "keypad"},
            {"keys": keys_text(event.get("data", b""))})


READINGS = {Event.CardRead: card_read, Event.KeyPress: key_press}

LOCAL_STATUS = (  # (byte index in the local status report, problem when non-zero)
    (0, "tamper"),
    (1, "power failure"),
)


STATUS_MEASUREMENT = "reader_status"
"""Each local status report is also a reading, so alarm rules see a tamper (the state
alone says only "error"): fields ``tamper`` and ``power_failure``, 0 or 1."""


def local_status(event: Mapping[str, Any]) -> dict[str, FieldValue] | None:
    """The fields of a local status report; None when the event is not one."""
    if event.get("event") != Event.Status or event.get("type") != StatusReportType.Local:
        return None
    report: bytes = event.get("report", b"")
    return {name.replace(" ", "_"): int(index < len(report) and bool(report[index]))
            for index, name in LOCAL_STATUS}


def local_problems(event: Mapping[str, Any]) -> list[str] | None:
    """Problems in a local status report; None when the event is not one."""
    if event.get("event") != Event.Status or event.get("type") != StatusReportType.Local:
        return None
    report: bytes = event.get("report", b"")
    return [name for index, name in LOCAL_STATUS if index < len(report) and report[index]]
