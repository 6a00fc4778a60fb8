"""Alarm counters for ``/status``, ``/metrics`` and ``iotgw status``: transitions by cause,
chatter, and floods as EEMUA 191 defines them.

EEMUA 191 puts a manageable rate at about one alarm per ten minutes per operator and calls
more than 10 alarms raised within 10 minutes a flood: past that, operators stop reading
them (``alarms.flood_count`` / ``alarms.flood_window`` change the figures). The window
slides over raise times (the engine's clock); entering a flood counts
once, however long it lasts. Counts restart with the process like the other counters;
the alarms themselves (and their ``seq``) are the engine's durable journal.
"""

from __future__ import annotations

import weakref
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from gateway.alarms.model import ACTIVE_STATES, UNACKED_STATES, AlarmSnapshot, Transition

FLOOD_WINDOW = 600.0
"""EEMUA 191: ten minutes."""
FLOOD_LIMIT = 10
"""More than this many raises within FLOOD_WINDOW is a flood."""
LISTED_MAX = 500
"""Alarms listed in ``/status`` at most (the counts cover all of them)."""
RAISING_CAUSES = frozenset({"raise"})
"""Causes that annunciate a new alarm (a re-alarm repeats one; it is not a new alarm)."""


class AlarmStats:
    def __init__(self, flood_limit: int = FLOOD_LIMIT, flood_window: float = FLOOD_WINDOW
                 ) -> None:
        self.flood_limit = flood_limit
        self.flood_window = flood_window
        self.transitions: Counter[str] = Counter()
        self.chatter_total = 0
        self.floods_total = 0
        self.in_flood = False
        self._raised: deque[float] = deque()
        self.attached_to: object | None = None
        """The AlarmService whose transitions this counts."""

    def on_transition(self, transition: Transition) -> None:
        """A transition listener (``AlarmService.add_transition_listener``)."""
        self.transitions[transition.cause] += 1
        if transition.cause == "chatter" and transition.alarm.chatter:
            self.chatter_total += 1  # flagged (the same cause unflags it later)
        if transition.cause in RAISING_CAUSES:
            self._raised.append(transition.at)
        self.raised_within(transition.at)

    def raised_within(self, now: float) -> int:
        """Raises in the flood window ending at ``now``; enters / leaves the flood state."""
        raised = self._raised
        while raised and raised[0] <= now - self.flood_window:
            raised.popleft()
        flooding = len(raised) > self.flood_limit
        if flooding and not self.in_flood:
            self.floods_total += 1
        self.in_flood = flooding
        return len(raised)

    def snapshot(self, alarms: Iterable[AlarmSnapshot], now: float,
                 engine: Any = None) -> dict[str, Any]:
        """The ``alarms`` section of the status snapshot (a contract: add keys only)."""
        by_state: Counter[str] = Counter()
        active_by_severity: Counter[str] = Counter()
        unacked_by_severity: Counter[str] = Counter()
        chattering = 0
        listed: list[dict[str, Any]] = []
        total = 0
        for alarm in alarms:
            total += 1
            by_state[str(alarm.state)] += 1
            severity = str(alarm.severity)
            if alarm.state in ACTIVE_STATES:
                active_by_severity[severity] += 1
            if alarm.state in UNACKED_STATES:
                unacked_by_severity[severity] += 1
            chattering += alarm.chatter
            if str(alarm.state) != "normal":
                listed.append(_listed(alarm))
        listed.sort(key=lambda a: (a["severity"], -a["since"]))
        raised = self.raised_within(now)
        return {
            "enabled": True, "count": total,
            "active": sum(active_by_severity.values()),
            "unacked": sum(unacked_by_severity.values()),
            "active_by_severity": dict(sorted(active_by_severity.items())),
            "unacked_by_severity": dict(sorted(unacked_by_severity.items())),
            "by_state": dict(sorted(by_state.items())),
            "transitions": dict(sorted(self.transitions.items())),
            "chatter_total": self.chatter_total, "chattering": chattering,
            "floods_total": self.floods_total, "flood": self.in_flood,
            "raised_last_10min": raised,
            "flood_limit": self.flood_limit, "flood_window_seconds": self.flood_window,
            "list": listed[:LISTED_MAX], "list_truncated": len(listed) > LISTED_MAX,
            **_engine_counters(engine),
        }


def _engine_counters(engine: Any) -> dict[str, Any]:
    """What only the engine knows: readings it looked at, rule evaluations, rules that
    failed at run time (missing field, wrong type) by rule id."""
    counters = getattr(engine, "counters", None)
    if counters is None:
        return {"readings": 0, "evaluations": 0, "rule_errors": {}}
    return {"readings": counters.readings, "evaluations": counters.evaluations,
            "rule_errors": dict(sorted(counters.rule_errors.items()))}


DISABLED: dict[str, Any] = {"enabled": False, "count": 0, "active": 0, "unacked": 0,
                            "active_by_severity": {}, "unacked_by_severity": {},
                            "by_state": {}, "transitions": {}, "chatter_total": 0,
                            "chattering": 0, "floods_total": 0, "flood": False,
                            "raised_last_10min": 0, "flood_limit": FLOOD_LIMIT,
                            "flood_window_seconds": FLOOD_WINDOW, "list": [],
                            "list_truncated": False, "readings": 0, "evaluations": 0,
                            "rule_errors": {}}
"""The section when no alarm engine runs (no rules)."""


def _listed(alarm: AlarmSnapshot) -> dict[str, Any]:
    return {"rule": alarm.key.rule, "device": alarm.key.device, "state": str(alarm.state),
            "severity": alarm.severity, "since": alarm.since, "value": alarm.value,
            "message": alarm.message, "seq": alarm.seq, "latched": alarm.latched,
            "chatter": alarm.chatter, "shelved_until": alarm.shelved_until}


_STATS: weakref.WeakKeyDictionary[Any, AlarmStats] = weakref.WeakKeyDictionary()


def stats_for(gateway: Any) -> AlarmStats:
    """The one AlarmStats of ``gateway``; :func:`attach` feeds it."""
    stats = _STATS.get(gateway)
    if stats is None:
        settings = getattr(gateway.config.model, "alarms", None)
        stats = _STATS[gateway] = AlarmStats(
            getattr(settings, "flood_count", FLOOD_LIMIT),
            getattr(settings, "flood_window", FLOOD_WINDOW))
    return stats


def attach(gateway: Any) -> None:
    """Start counting the transitions of ``gateway.alarms`` (idempotent per gateway)."""
    service = getattr(gateway, "alarms", None)
    if service is None:
        return
    stats = stats_for(gateway)
    if stats.attached_to is not service:
        service.add_transition_listener(stats.on_transition)
        stats.attached_to = service


def status_section(gateway: Any, now: float) -> dict[str, Any]:
    service = getattr(gateway, "alarms", None)
    if service is None:
        return dict(DISABLED)
    attach(gateway)  # rules added by a reload to a gateway started without any
    return stats_for(gateway).snapshot(service.alarms(), now, getattr(service, "engine", None))
