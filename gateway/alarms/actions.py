"""Rule actions: on raise or clear, one allow-listed device write (close a water valve,
hold a gate open), opt-in per rule.

```yaml
rules:
  - id: water-leak
    ...
    actions:
      on_raise: {device: valve-b3, point: close_valve, value: 1}
      on_clear: {device: valve-b3, point: close_valve, value: 0}
      min_interval: 5m
```

Safety, in layers: the config is refused at load (exit 2, with the line) when an action
names a device that does not exist or a point not in that device's ``allow_write``
(:func:`action_findings`); at run time the write goes through ``Gateway.write_point``,
which checks ``allow_write`` again (a reload may have changed it); a chattering alarm
cannot hammer a valve: per (rule, device) and trigger, a write runs at most once per
``min_interval`` and the ones in between are skipped. Every write, failed write and
skipped write is an audit record (``alarms/events``, ``"type": "action"``). Writes run
one at a time in a supervised task, in transition order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from gateway.alarms.audit import AuditRecord, AuditTrail
from gateway.alarms.model import AlarmKey, Transition
from gateway.config.types import Duration, StrictModel
from gateway.driver import ID_PATTERN

log = logging.getLogger("iotgw.alarms.actions")

QUEUE_MAX = 1000
"""Writes waiting at most; past it (a flood against a dead bus) they are skipped, audited."""
TRIGGERS = {"raise": "on_raise", "clear": "on_clear"}
"""Transition cause -> the RuleActions field that runs on it."""


class WriteAction(StrictModel):
    device: str = Field(pattern=ID_PATTERN, max_length=64, description="the device to write")
    point: str = Field(min_length=1, max_length=128,
                       description="a point in that device's allow_write")
    value: bool | int | float | str = Field(description="the value written")

    @field_validator("value")
    @classmethod
    def _finite(cls, value: bool | int | float | str) -> bool | int | float | str:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value


class RuleActions(StrictModel):
    """``actions:`` of a rule."""

    on_raise: WriteAction | None = None
    on_clear: WriteAction | None = None
    min_interval: Duration = Field(
        default=60.0, ge=1, le=86400,
        description="per alarm and trigger, at most one write this often (chatter guard)")


@dataclass(frozen=True, slots=True)
class _Job:
    key: AlarmKey
    trigger: str
    write: WriteAction


RulesActions = Callable[[], Mapping[str, RuleActions]]
"""The current ``rule id -> actions`` (read per transition, so a reload takes effect)."""


class ActionRunner:
    def __init__(self, gateway: Any, actions: RulesActions, audit: AuditTrail,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway = gateway
        self._actions = actions
        self._audit = audit
        self._clock = clock
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(QUEUE_MAX)
        self._last: dict[tuple[AlarmKey, str], float] = {}
        self.counts: dict[str, int] = {}

    def on_transition(self, transition: Transition) -> None:
        """A transition listener: queue the rule's write for this cause, if any."""
        trigger = TRIGGERS.get(transition.cause)
        if trigger is None:
            return
        key = transition.alarm.key
        actions = self._actions().get(key.rule)
        write = getattr(actions, trigger, None) if actions is not None else None
        if actions is None or write is None:
            return
        now = self._clock()
        last = self._last.get((key, trigger))
        if last is not None and now - last < actions.min_interval:
            self._done(_Job(key, trigger, write), False,
                       f"rate limited: one {trigger} write per {actions.min_interval:g}s")
            return
        try:
            self._queue.put_nowait(_Job(key, trigger, write))
        except asyncio.QueueFull:
            self._done(_Job(key, trigger, write), False,
                       f"skipped: {QUEUE_MAX} writes already waiting")
            return
        self._last[key, trigger] = now

    async def run(self) -> None:
        """The supervised task: one write at a time, in order."""
        while True:
            job = await self._queue.get()
            write = job.write
            try:
                result = await self.gateway.write_point(write.device, write.point, write.value)
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
            "trigger": job.trigger, "client": f"rule {job.key.rule}",
            "target": {"device": job.write.device, "point": job.write.point,
                       "value": job.write.value}}
        if error is not None:
            detail["error"] = error
        if result:
            detail["result"] = result
        self._audit.record(AuditRecord("action", job.key.rule, job.key.device, ok,
                                       detail=detail))


def action_findings(rules: Any, devices: Any, where: tuple[Any, ...] = ("rules",)
                    ) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Config findings for the ``actions`` of ``rules``: an unknown device, a point not in
    its ``allow_write``. ``where`` is the YAML path of the rules list."""
    allowed = {d.id: frozenset(d.allow_write) for d in devices}
    for index, rule in enumerate(rules):
        actions: RuleActions | None = getattr(rule, "actions", None)
        if actions is None:
            continue
        for trigger in TRIGGERS.values():
            write: WriteAction | None = getattr(actions, trigger)
            if write is None:
                continue
            path = (*where, index, "actions", trigger)
            if write.device not in allowed:
                yield ((*path, "device"), f"unknown device {write.device!r}")
            elif write.point not in allowed[write.device]:
                points = ", ".join(sorted(allowed[write.device])) or "none"
                yield ((*path, "point"),
                       f"point {write.point!r} is not in {write.device}'s allow_write "
                       f"(allowed: {points}); an action may only write allow-listed points")
