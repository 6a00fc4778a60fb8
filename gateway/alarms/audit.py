"""Who did what to an alarm: operator commands and rule actions, as audit records.

ISA-18.2 asks that an acknowledge, a shelve or a device write made because of an alarm can
be traced to who or what made it. Every record is logged (INFO, with JSON extras) and
handed to the listeners; the ops bus publishes each on ``<base>/alarms/events`` with
``"type": "command"`` or ``"type": "action"`` next to the transitions (docs/topics.md).
Refused commands and skipped actions are recorded too: an operator who tried and failed
is as much a fact as one who succeeded.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.jsonsafe import finite

log = logging.getLogger("iotgw.alarms.audit")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    kind: str
    """``command`` (cmd/alarm) or ``action`` (a rule's device write)."""
    rule: str
    device: str
    ok: bool
    at: float = field(default_factory=time.time)
    detail: dict[str, Any] = field(default_factory=dict)
    """Kind-specific keys: action, client, error, state, seq / trigger, target, error."""

    def as_json(self) -> dict[str, Any]:
        """The record as JSON can carry it: a non-finite number in ``detail`` (a command
        body's ``"for": NaN``, which the ops bus's parser took) is null."""
        detail = finite(self.detail)
        assert isinstance(detail, dict)
        return {"type": self.kind, "rule": self.rule, "device": self.device, "ok": self.ok,
                "at": self.at, **detail}


AuditListener = Callable[[AuditRecord], None]


class AuditTrail:
    def __init__(self) -> None:
        self._listeners: list[AuditListener] = []
        self.counts: dict[str, int] = {}
        """``<kind>_ok`` / ``<kind>_refused`` since start."""

    def add_listener(self, listener: AuditListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: AuditListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def record(self, record: AuditRecord) -> None:
        key = f"{record.kind}_{'ok' if record.ok else 'refused'}"
        self.counts[key] = self.counts.get(key, 0) + 1
        what = record.detail.get("action") or record.detail.get("trigger") or "?"
        who = record.detail.get("client") or "rule"
        log.info("alarm %s %s %s/%s by %s: %s", record.kind, what, record.rule, record.device,
                 who, "ok" if record.ok else f"refused: {record.detail.get('error')}",
                 extra={"audit": record.as_json()})
        for listener in self._listeners:
            listener(record)


_TRAILS: weakref.WeakKeyDictionary[Any, AuditTrail] = weakref.WeakKeyDictionary()


def audit_for(gateway: Any) -> AuditTrail:
    """The one audit trail of ``gateway`` (several gateways may share a process in tests)."""
    trail = _TRAILS.get(gateway)
    if trail is None:
        trail = _TRAILS[gateway] = AuditTrail()
    return trail
