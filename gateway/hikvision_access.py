"""Hikvision access-controller events as the access-event contract of docs/schema.md
reads them: which credential was presented (``kind``), whether the terminal let the
person through (``result``), and which one field names them (``card`` or ``person``).

Hikvision terminals say this in two numbers: ``majorEventType`` 5 ("event") and a
``subEventType`` per outcome (HCNetSDK's ``MINOR_*`` codes: 0x01 card verified, 0x09 no
such card, 0x4b face verified, 0x4c face refused ...). Without the mapping every event
with a card number counted as an entry, refused swipes included (found by the outside
probe). Both drivers that read Hikvision terminals use this table, the stream one
(drivers/event_stream) and the push one (drivers/camera_push), so it lives in the core:
neither imports the other.

An event that is not a verification (a door opened, a button pressed, an alarm) or
whose code is not in the table has no ``kind``, no ``result`` and no credential field:
it is not a passage, and the governance queries do not count it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAJOR_EVENT = 5
"""``majorEventType`` of access events (the others are alarms, exceptions, operations)."""

GRANTED = "granted"
DENIED = "denied"


@dataclass(frozen=True)
class Verification:
    kind: str
    """card, face, fingerprint, keypad, qr: the contract's ``kind`` tag."""
    result: str
    """granted | denied: the contract's ``result`` tag."""

    @property
    def credential_field(self) -> str | None:
        """The contract's one credential field: ``card`` (the card number) for a card,
        ``person`` (the terminal's employee number) for a face; the contract names none
        for the other kinds, so they carry none (the governance queries count card,
        face and plate passages)."""
        return {"card": "card", "face": "person"}.get(self.kind)


def _codes(kind: str, result: str, *minors: int) -> dict[int, Verification]:
    return dict.fromkeys(minors, Verification(kind, result))


VERIFICATIONS: dict[int, Verification] = {
    # card alone, card + password, card + fingerprint (+ password), multi-card groups;
    # face + card is a card event too (one identity per event: the card, per the contract)
    **_codes("card", GRANTED, 0x01, 0x02, 0x10, 0x28, 0x2B, 0x3C, 0x42),
    **_codes("card", DENIED, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C,
             0x0D, 0x0E, 0x0F, 0x29, 0x2A, 0x2C, 0x2D, 0x3D, 0x3E, 0x43, 0x44),
    # face alone, employee number + face, face + fingerprint / password
    **_codes("face", GRANTED, 0x4B, 0x4D, 0x36, 0x39, 0x3F),
    **_codes("face", DENIED, 0x4C, 0x4E, 0x4F, 0x50, 0x37, 0x38, 0x3A, 0x3B, 0x40, 0x41),
    # fingerprint alone, + password, employee number + fingerprint (+ password)
    **_codes("fingerprint", GRANTED, 0x26, 0x2E, 0x45, 0x48),
    **_codes("fingerprint", DENIED, 0x27, 0x2F, 0x30, 0x31, 0x46, 0x47, 0x49, 0x4A),
    # password / employee number + password; refused: wrong, too many tries, no such
    # employee number
    **_codes("keypad", GRANTED, 0xB5, 0x65),
    **_codes("keypad", DENIED, 0x96, 0x97, 0x94, 0x66, 0x67, 0x98),
    **_codes("qr", GRANTED, 0x9C),
    **_codes("qr", DENIED, 0x9D),
}
# ``fingerprint`` is not among the contract's examples (card, face, plate, keypad, qr);
# it is named as they are, "for other credentials".
"""``subEventType`` of major 5 -> what was verified and the terminal's decision."""


def verification(major: int | None, minor: int | None) -> Verification | None:
    """The verification an event reports; None when it is none (or not known)."""
    if major != MAJOR_EVENT or minor is None:
        return None
    return VERIFICATIONS.get(minor)


def contract(major: int | None, minor: int | None, card: str | None,
             employee: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """The contract's tags (``kind``, ``result``) and credential fields of one event.

    One identity per event: a card event carries ``card`` and keeps the employee number
    behind it as ``employee`` (another name, never ``person``, or every swipe would also
    count as a face); a face event carries ``person`` (the employee number) and no card
    number. Other events (fingerprint, PIN, QR code, no verification at all) carry no
    credential field and keep only ``employee``. Pseudonymise ``card``, ``person`` and
    ``employee`` alike (:data:`SAME_VALUE`)."""
    found = verification(major, minor)
    tags = {"kind": found.kind, "result": found.result} if found is not None else {}
    credential = found.credential_field if found is not None else None
    if credential == "person":
        return tags, ({"person": employee} if employee else {})
    fields = {"card": card} if credential == "card" and card else {}
    if employee:
        fields["employee"] = employee
    return tags, fields


SAME_VALUE: dict[str, str] = {"employee": "person", "person": "employee"}
"""Fields that hold the same value (the terminal's employee number) on different
events: a device that pseudonymises one must pseudonymise the other, or a config
written before ``person`` existed (``pseudonymize: [card, employee]``) would store face
events' employee numbers in clear."""


def with_same_values(names: list[str]) -> list[str]:
    """``names`` (a device's ``pseudonymize``) plus the fields holding the same values."""
    out = list(names)
    for name in names:
        twin = SAME_VALUE.get(name)
        if twin is not None and twin not in out:
            out.append(twin)
    return out
