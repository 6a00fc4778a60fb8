"""gateway/accessevents.py: Hikvision access codes -> the contract's kind and result
(docs/schema.md), shared by camera_push and event_stream."""

from __future__ import annotations

from gateway.accessevents import _CODES, hikvision_access


def test_codes_of_the_common_passages() -> None:
    assert hikvision_access(5, 0x01) == ("card", "granted")
    assert hikvision_access(5, 0x09) == ("card", "denied")      # no such card
    assert hikvision_access(5, 0x4b) == ("face", "granted")     # 75: face verified
    assert hikvision_access(5, 0x4c) == ("face", "denied")
    assert hikvision_access(5, 0x3c) == ("face", "granted")     # face and card
    assert hikvision_access(5, 0x26) == ("fingerprint", "granted")
    assert hikvision_access(5, 0xb5) == ("keypad", "granted")
    assert hikvision_access(5, 0x32) == ("card", "")            # the platform decides
    assert hikvision_access(5, 0x0a) == ("", "denied")          # anti-passback: no kind


def test_anything_else_is_no_passage() -> None:
    assert hikvision_access(5, 0x15) == ("", "")    # door unlocked
    assert hikvision_access(5, 0x17) == ("", "")    # exit button
    assert hikvision_access(2, 0x01) == ("", "")    # an exception, not an event
    assert hikvision_access(3, 0x400) == ("", "")   # remote operation
    assert hikvision_access(5, 10**9) == ("", "")
    assert hikvision_access(-1, -1) == ("", "")


def test_each_code_has_one_meaning() -> None:
    listed = [m for outcomes in _CODES.values() for minors in outcomes.values() for m in minors]
    assert len(listed) == len(set(listed))
