"""What the alarm engine hands to the rest of the gateway: states, snapshots, transitions.

This module is the contract between the engine (rules, timers, the journal) and its
outputs (ops bus topics, the ``alarm`` series, metrics, Home Assistant, actions, the
CLI). The outputs see only these types, so either side can change without the other.
States follow ISA-18.2 / IEC 62682 (see docs/alarms.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from gateway.errors import GatewayError
from gateway.reading import FieldValue

NAME_MAX = 128
"""Longest alarm name (the device part of the key) kept as it is, in characters."""
_NAME_SHOWN = NAME_MAX - 16
KEY_VALUE_MAX = 1024
"""How much of a shortened count key's value the alarm keeps (``key_value``)."""


def name_digest(name: str, digits: int) -> str:
    """The first ``digits`` hex digits of the SHA-256 of ``name``: the one hash by which
    names too odd or too long to use as they are get a stable, distinct short form (here
    and in the Home Assistant object ids, gateway/mqtt/discovery.py)."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:digits]


def bounded_name(name: str) -> str:
    """``name`` if it has at most NAME_MAX characters, else its first 112 characters,
    ``~`` and 16 hex digits of its hash (129 characters).

    An alarm of a count rule is named by a value from a reading (``key: reader``), which
    can be any length: 70,000 characters made a topic level paho refuses and an alarm
    whose ``cmd/alarm ack`` is larger than the ops bus accepts. The short form is stable
    (the same value always names the same alarm, across restarts), distinct for distinct
    values (64 bits of hash), and longer than NAME_MAX, so no value kept as it is can
    name the same alarm as a shortened one. Not idempotent (a short form is itself over
    NAME_MAX): apply it to a reading's value, not to an alarm's name."""
    if len(name) <= NAME_MAX:
        return name
    return f"{name[:_NAME_SHOWN]}~{name_digest(name, 16)}"


class AlarmState(StrEnum):
    NORMAL = "normal"
    ACTIVE_UNACKED = "active_unacked"
    ACTIVE_ACKED = "active_acked"
    CLEARED_UNACKED = "cleared_unacked"
    """Returned to normal but not yet acknowledged."""
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"
    OUT_OF_SERVICE = "out_of_service"


ACTIVE_STATES = frozenset({AlarmState.ACTIVE_UNACKED, AlarmState.ACTIVE_ACKED})
UNACKED_STATES = frozenset({AlarmState.ACTIVE_UNACKED, AlarmState.CLEARED_UNACKED})


class AlarmAction(StrEnum):
    """Operator commands (``cmd/alarm``)."""

    ACK = "ack"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    RESET = "reset"
    OUT_OF_SERVICE = "out_of_service"
    IN_SERVICE = "in_service"


@dataclass(frozen=True, slots=True)
class AlarmKey:
    """One alarm per (rule, device)."""

    rule: str
    device: str


@dataclass(frozen=True, slots=True)
class AlarmSnapshot:
    """An alarm as it stands: the retained ``alarms/<rule>/<device>`` payload."""

    key: AlarmKey
    state: AlarmState
    severity: int
    """1 (highest) .. 4."""
    since: float
    """Epoch seconds of the last state change."""
    value: FieldValue | None
    """The value that decided the last raise or clear."""
    message: str
    seq: int
    """Grows by one with every transition of this alarm, across restarts: (alarm_id, seq)
    identifies a transition, so a consumer can drop a repeat after a crash."""
    alarm_id: str
    """Stable for the (rule, device) pair."""
    latched: bool = False
    chatter: bool = False
    shelved_until: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    """The device's installer tags (building, unit ...), for routing and queries."""
    key_value: str | None = None
    """For an alarm named by a count key whose value was longer than NAME_MAX (its name
    is then :func:`bounded_name`): that value, at most KEY_VALUE_MAX characters of it."""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def acked(self) -> bool:
        return self.state not in UNACKED_STATES


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of one alarm, journaled before anyone is told."""

    alarm: AlarmSnapshot
    """The state after the change."""
    previous: AlarmState
    cause: str
    """raise, clear, ack, shelve, unshelve, reset, out_of_service, in_service, suppress,
    unsuppress, realarm, chatter."""
    at: float
    """Epoch seconds (the engine's clock; simulated in ``iotgw rules test``)."""
    client: str | None = None
    """Who sent the command that caused it; None for the engine itself."""


@dataclass(frozen=True, slots=True)
class AlarmCommand:
    action: AlarmAction
    rule: str
    device: str
    client: str
    duration: float | None = None
    """``for`` of a timed shelve, seconds; None for one-shot."""


class AlarmCommandRefused(GatewayError):
    """A command that does not apply (unknown alarm, ack of a normal alarm ...)."""

    retryable = False


TransitionListener = Callable[[Transition], None]


class AlarmService(Protocol):
    """What outputs (ops bus, metrics, status, Home Assistant, actions) need of the engine."""

    def add_transition_listener(self, listener: TransitionListener) -> None:
        """Called after each transition is committed, in order, on the event loop."""
        ...

    def alarms(self) -> list[AlarmSnapshot]:
        """Every alarm the engine knows, in any state."""
        ...

    async def command(self, command: AlarmCommand) -> AlarmSnapshot:
        """Apply an operator command; returns once its transition is committed.
        Raises AlarmCommandRefused when it does not apply."""
        ...
