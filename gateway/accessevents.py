"""The access-event contract's ``kind`` and ``result`` for vendor event codes.

docs/schema.md ("Access events ... the contract") asks every driver that emits passages
for tags ``kind`` (card, face, plate, keypad, qr ...) and ``result`` (granted, denied;
omitted when the device does not decide): the governance queries count passages by
them, so a denied swipe written without ``result`` is counted as an entry. Hikvision
access terminals say both only as numbers, ``majorEventType`` / ``subEventType`` (ISAPI
push and the AcsEvent search) or ``dwMajor`` / ``dwMinor`` (HCNetSDK); the push driver
(camera_push) and the stream driver (event_stream) both read them, so the table lives
here, once, in the core.

Codes from Hikvision's HCNetSDK headers (``MAJOR_EVENT`` = 0x5 and its ``MINOR_*``
values), as published in SDK samples and integrations. Only codes whose credential and
outcome are unambiguous are listed; any other code is ``("", "")`` (not a passage as
far as the contract goes: stored, but not counted), and an outcome whose credential the
code does not say is ``("", "granted" | "denied")``. Two kinds beyond the contract's
card, face and plate: ``fingerprint`` and ``keypad`` (a password or employee number plus
password).
"""

from __future__ import annotations

from collections.abc import Iterable

MAJOR_EVENT = 0x5
"""Hikvision's major type of access events (others: 0x1 alarm, 0x2 exception, 0x3
operation)."""

GRANTED = "granted"
DENIED = "denied"

_CODES: dict[str, dict[str, tuple[int, ...]]] = {
    "card": {
        GRANTED: (0x01,   # legal card pass
                  0x02,   # card and password pass
                  0x28,   # card and fingerprint pass
                  0x2b),  # card, fingerprint and password pass
        DENIED: (0x03, 0x04, 0x05,  # card and password: fail, timeout, over time
                 0x06,   # card has no right
                 0x07,   # outside the card's valid period
                 0x08,   # card out of date
                 0x09,   # no such card
                 0x0c,   # card not in the multi-verification group
                 0x0d,   # outside the multi-verification period
                 0x29, 0x2a,  # card and fingerprint: fail, timeout
                 0x2c, 0x2d,  # card, fingerprint and password: fail, timeout
                 0x77,   # card encryption verification failed
                 0xa2,   # not a genuine M1 card
                 0xa3),  # CPU card encryption verification failed
    },
    "face": {
        GRANTED: (0x36,   # face and fingerprint pass
                  0x39,   # face and password pass
                  0x3c,   # face and card pass
                  0x3f,   # face, password and fingerprint pass
                  0x42,   # face, card and fingerprint pass
                  0x4b,   # face verified
                  0x4d),  # employee number and face pass
        DENIED: (0x37, 0x38,  # face and fingerprint: fail, timeout
                 0x3a, 0x3b,  # face and password: fail, timeout
                 0x3d, 0x3e,  # face and card: fail, timeout
                 0x40, 0x41,  # face, password and fingerprint: fail, timeout
                 0x43, 0x44,  # face, card and fingerprint: fail, timeout
                 0x4c,        # face verification failed
                 0x4e, 0x4f,  # employee number and face: fail, timeout
                 0x50),       # face not recognised
    },
    "fingerprint": {
        GRANTED: (0x26,   # fingerprint matched
                  0x2e,   # fingerprint and password pass
                  0x45,   # employee number and fingerprint pass
                  0x48),  # employee number, fingerprint and password pass
        DENIED: (0x27,        # fingerprint mismatched
                 0x2f, 0x30,  # fingerprint and password: fail, timeout
                 0x31,        # no such fingerprint
                 0x46, 0x47,  # employee number and fingerprint: fail, timeout
                 0x49, 0x4a),  # employee number, fingerprint and password: fail, timeout
    },
    "keypad": {
        GRANTED: (0x65,   # employee number and password pass
                  0xb5),  # password verified
        DENIED: (0x66, 0x67,  # employee number and password: fail, timeout
                 0x96,        # password verification failed
                 0x97),       # password mismatch
    },
    "": {  # an outcome without a known credential
        GRANTED: (0x10,   # multi-verification succeeded
                  0x99),  # combined verification passed
        DENIED: (0x0a,   # anti-passback check failed
                 0x0b,   # interlocked door not closed
                 0x0e,   # no super right in multi-verification
                 0x75,   # door closed or dormant
                 0x76,   # authentication schedule dormant
                 0x78,   # anti-passback server did not answer
                 0x98,   # no such employee number
                 0x9b),  # verification mode mismatch
    },
}

_MINORS: dict[int, tuple[str, str]] = {
    minor: (kind, result)
    for kind, outcomes in _CODES.items()
    for result, minors in outcomes.items()
    for minor in minors
}
_MINORS[0x32] = ("card", "")  # card verified by the platform: the terminal does not decide


def hikvision_access(major: int, minor: int) -> tuple[str, str]:
    """``(kind, result)`` of a Hikvision access-control event; ``""`` for what the code
    does not say (write no tag then). ``(5, 75)`` -> ``("face", "granted")``,
    ``(5, 9)`` -> ``("card", "denied")``, a door or alarm event -> ``("", "")``."""
    if major != MAJOR_EVENT:
        return "", ""
    return _MINORS.get(minor, ("", ""))


EMPLOYEE_RENAMED = ("the field employee is no longer written: the employee number is person "
                    "on face events and holder on the others; list [card, person, holder]")
"""The config error for a Hikvision device still hiding ``employee`` (both drivers)."""


def hides_only_old_employee(pseudonymize: Iterable[str]) -> bool:
    """``pseudonymize: [employee]`` hid the employee number until Hikvision events followed
    the access-event contract; it is now ``person`` (face events) or ``holder`` (others).
    A device listing the old name without both new ones would send the number in clear,
    so the drivers refuse it at check."""
    hidden = set(pseudonymize)
    return "employee" in hidden and not {"person", "holder"} <= hidden
