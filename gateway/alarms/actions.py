"""Rule actions: on raise or clear, an allow-listed device write (close a water valve,
hold a gate open), opt-in per rule.

```yaml
rules:
  - id: water-leak
    ...
    actions:
      - {on: raise, device: valve-b3, point: close_valve, value: 1, min_interval: 5m}
      - {on: clear, device: valve-b3, point: close_valve, value: 0}
```

(the model is the engine's ``RuleAction``, gateway/alarms/config.py; ``device`` defaults
to the alarm's own device). Safety, in layers: the config is refused at load (exit 2, with
the line) when an action names a device that does not exist or a point not in the
``allow_write`` of the device it would write (:func:`action_findings`); at run time the
write goes through ``Gateway.write_point``, which checks ``allow_write`` again (a reload
may have changed it); a chattering alarm cannot hammer a valve: per (rule, device) and
action, a write runs at most once per ``min_interval`` and the ones in between are skipped.
Every write, failed write and skipped write is an audit record (``alarms/events``,
``"type": "action"``). Writes run one at a time in a supervised task, in transition order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.alarms.audit import AuditRecord, AuditTrail
from gateway.alarms.model import AlarmKey, Transition

log = logging.getLogger("iotgw.alarms.actions")

QUEUE_MAX = 1000
"""Writes waiting at most; past it (a flood against a dead bus) they are skipped, audited."""
TRIGGERS = frozenset({"raise", "clear"})
"""Transition causes an action can run on."""


class ActionSpec(Protocol):
    """One action of a rule (the engine's ``RuleAction``)."""

    @property
    def on(self) -> str: ...
    @property
    def point(self) -> str: ...
    @property
    def value(self) -> bool | int | float | str: ...
    @property
    def device(self) -> str | None: ...
    @property
    def min_interval(self) -> float: ...


@dataclass(frozen=True, slots=True)
class _Job:
    key: AlarmKey
    index: int
    """The action's position in the rule's list (rate limits are per action)."""
    action: ActionSpec
    device: str
    """The device written: the action's, or the alarm's own."""


ActionsOf = Callable[[str], Sequence[ActionSpec]]
"""A rule's current actions by rule id (read per transition, so a reload takes effect)."""


class ActionRunner:
    def __init__(self, gateway: Any, actions_of: ActionsOf, audit: AuditTrail,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway = gateway
        self._actions_of = actions_of
        self._audit = audit
        self._clock = clock
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(QUEUE_MAX)
        self._last: dict[tuple[AlarmKey, int], float] = {}
        self.counts: dict[str, int] = {}

    def on_transition(self, transition: Transition) -> None:
        """A transition listener: queue the rule's writes for this cause, if any."""
        cause = transition.cause
        if cause not in TRIGGERS:
            return
        key = transition.alarm.key
        for index, action in enumerate(self._actions_of(key.rule)):
            if action.on == cause:
                self._queue_write(_Job(key, index, action, action.device or key.device))

    def _queue_write(self, job: _Job) -> None:
        now = self._clock()
        last = self._last.get((job.key, job.index))
        interval = job.action.min_interval
        if last is not None and now - last < interval:
            self._done(job, False, f"rate limited: at most one write per {interval:g}s")
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._done(job, False, f"skipped: {QUEUE_MAX} writes already waiting")
            return
        self._last[job.key, job.index] = now

    async def run(self) -> None:
        """The supervised task: one write at a time, in order."""
        while True:
            job = await self._queue.get()
            try:
                result = await self.gateway.write_point(job.device, job.action.point,
                                                        job.action.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed write is an audit record, not a crash
                self._done(job, False, f"{type(exc).__name__}: {exc}")
            else:
                self._done(job, True, None, result)

    def _done(self, job: _Job, ok: bool, error: str | None,
              result: dict[str, Any] | None = None) -> None:
        outcome = "ok" if ok else ("rate_limited" if error and error.startswith("rate")
                                   else "failed")
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        detail: dict[str, Any] = {
            "trigger": f"on_{job.action.on}", "client": f"rule {job.key.rule}",
            "target": {"device": job.device, "point": job.action.point,
                       "value": job.action.value}}
        if error is not None:
            detail["error"] = error
        if result:
            detail["result"] = result
        self._audit.record(AuditRecord("action", job.key.rule, job.key.device, ok,
                                       detail=detail))


def action_findings(rules: Iterable[Any], devices: Sequence[Any],
                    selected: Callable[[Any], Iterable[Any]],
                    where: tuple[Any, ...] = ("rules",)
                    ) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Config findings for the ``actions`` of ``rules``: an unknown device, a point not in
    the ``allow_write`` of a device it would write (the named one, or else every device the
    rule selects: ``selected(rule)``). ``where`` is the YAML path of the rules list."""
    allowed = {d.id: frozenset(d.allow_write) for d in devices}
    for index, rule in enumerate(rules):
        for number, action in enumerate(getattr(rule, "actions", None) or ()):
            path = (*where, index, "actions", number)
            if action.device is not None and action.device not in allowed:
                yield ((*path, "device"), f"unknown device {action.device!r}")
                continue
            targets = [action.device] if action.device is not None else \
                [d.id for d in selected(rule)]
            for device in targets:
                if action.point not in allowed[device]:
                    points = ", ".join(sorted(allowed[device])) or "none"
                    yield ((*path, "point"),
                           f"point {action.point!r} is not in {device}'s allow_write "
                           f"(allowed: {points}); an action may only write allow-listed "
                           "points")
                    break


def check_actions(config: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    """The cross-check (gateway/config/crosscheck.py): actions of the config's rules
    (inline and included; an included rule's finding is reported at its own file and
    line) may only write allow-listed points of configured, enabled devices."""
    from gateway.alarms.checks import selected_devices

    rules = getattr(config, "rules", None) or []
    devices = [d for d in config.devices if d.enabled]
    yield from action_findings(rules, devices, lambda rule: selected_devices(rule, devices))
