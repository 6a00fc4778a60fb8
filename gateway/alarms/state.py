"""One alarm's state (ISA-18.2) and the rules for moving it; no I/O, no clock of its own.

The visible :class:`AlarmState` is derived from a few independent facts, which is what
makes shelving, suppression and out-of-service compose without special cases:

* ``active``: the alarm condition as the alarm sees it (latched alarms keep it until
  ``reset``); ``acked``: acknowledged since it last became active;
* ``overlay``: shelved, suppressed or out_of_service, which hide the first two (the
  condition is still tracked underneath, so leaving the overlay shows the truth).

An alarm leaving an overlay while its condition holds comes back ``active_unacked``: the
operator has not seen it.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.alarms.model import AlarmKey, AlarmSnapshot, AlarmState
from gateway.reading import FieldValue

OVERLAY_ORDER = (AlarmState.OUT_OF_SERVICE, AlarmState.SHELVED, AlarmState.SUPPRESSED)


def alarm_id(rule: str, device: str) -> str:
    """Stable for the (rule, device) pair, the same on every gateway and after restarts."""
    return hashlib.sha256(f"{rule}\0{device}".encode()).hexdigest()[:16]


@dataclass(slots=True, eq=False)
class Alarm:
    rule: str
    device: str
    alarm_id: str
    severity: int
    tags: dict[str, str]
    active: bool = False
    acked: bool = True
    out_of_service: bool = False
    shelved: bool = False
    suppressed: bool = False
    shelved_until: float | None = None
    """None while shelved: one-shot (ends when the condition clears)."""
    latched: bool = False
    chatter: bool = False
    seq: int = 0
    since: float = 0.0
    value: FieldValue | None = None
    message: str = ""
    # -- the condition and its timers (the engine's working state) --
    condition: bool = False
    """The debounced condition (after on-delay/off-delay), overlays not applied."""
    pending_on: float | None = None
    """When `when` started to hold (the on-delay runs from here)."""
    pending_off: float | None = None
    """When the clear started to hold (the off-delay runs from here)."""
    pending_value: FieldValue | None = None
    """The value (and, raising, the message) of a pending on- or off-delay: they become
    ``value``/``message`` only when the delay runs out. Set when the delay started, a
    cancelled clear left its value on an alarm that stayed active (``value`` is the value
    that decided the last raise or clear, not one that nearly did)."""
    pending_message: str = ""
    realarm_at: float | None = None
    last_seen: float | None = None
    changes: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    """Times of recent raises/clears, for chatter."""
    extra: dict[str, Any] | None = None
    """Count/window state (see engine), saved at checkpoints."""
    key_value: str | None = None
    """See :attr:`AlarmSnapshot.key_value`."""
    dirty: bool = False
    extra_changed: bool = False
    """``extra`` changed since the last checkpoint."""

    @property
    def key(self) -> AlarmKey:
        return AlarmKey(self.rule, self.device)

    @property
    def pair(self) -> tuple[str, str]:
        """(rule, device): the engine's dictionary key."""
        return (self.rule, self.device)

    @property
    def state(self) -> AlarmState:
        if self.out_of_service:
            return AlarmState.OUT_OF_SERVICE
        if self.shelved:
            return AlarmState.SHELVED
        if self.suppressed:
            return AlarmState.SUPPRESSED
        if self.active:
            return AlarmState.ACTIVE_ACKED if self.acked else AlarmState.ACTIVE_UNACKED
        return AlarmState.NORMAL if self.acked else AlarmState.CLEARED_UNACKED

    def snapshot(self) -> AlarmSnapshot:
        return AlarmSnapshot(
            key=self.key, state=self.state, severity=self.severity, since=self.since,
            value=self.value, message=self.message, seq=self.seq, alarm_id=self.alarm_id,
            latched=self.latched, chatter=self.chatter,
            shelved_until=self.shelved_until if self.shelved else None, tags=self.tags,
            key_value=self.key_value)

    # -- persistence (the journal's alarm_state row) ------------------------------------

    def to_row(self) -> dict[str, Any]:
        return {
            "active": self.active, "acked": self.acked, "oos": self.out_of_service,
            "shelved": self.shelved, "suppressed": self.suppressed,
            "shelved_until": self.shelved_until, "chatter": self.chatter,
            "condition": self.condition, "pending_on": self.pending_on,
            "pending_off": self.pending_off, "realarm_at": self.realarm_at,
            "changes": list(self.changes), "extra": self.extra,
            "pending_value": self.pending_value, "pending_message": self.pending_message,
            "key_value": self.key_value,
        }

    def load_row(self, row: dict[str, Any], *, keep_timers: bool) -> None:
        """Restore from a saved row; without ``keep_timers`` (the rule changed) the
        on/off-delays and window/count state start afresh, operator state is kept."""
        self.active = bool(row.get("active"))
        self.acked = bool(row.get("acked", True))
        self.out_of_service = bool(row.get("oos"))
        self.shelved = bool(row.get("shelved"))
        self.suppressed = bool(row.get("suppressed"))
        self.shelved_until = row.get("shelved_until")
        self.chatter = bool(row.get("chatter"))
        self.condition = bool(row.get("condition", self.active))
        self.realarm_at = row.get("realarm_at")
        self.changes.extend(row.get("changes") or ())
        key_value = row.get("key_value")
        self.key_value = key_value if isinstance(key_value, str) else None
        if keep_timers:
            self.pending_on = row.get("pending_on")
            self.pending_off = row.get("pending_off")
            # rows saved before these keys kept the pending value in value and message
            self.pending_value = row.get("pending_value", self.value)
            self.pending_message = str(row.get("pending_message", self.message))
            self.extra = row.get("extra")
