"""The alarm engine: readings and commands in, transitions out. Synchronous, no I/O.

The engine never reads a clock: every call takes ``now`` (epoch seconds), so the gateway
passes wall time and ``iotgw rules test`` passes the replayed readings' times. It never
writes anything either: transitions and changed alarms pile up until :meth:`take`, and
the service (:mod:`gateway.alarms.service`) commits them to the journal before any
listener hears of them.

Index: rules are looked up per (device, measurement) once and cached; a reading is then
evaluated only against rules that select its device and measurement and that read at
least one of its fields. A condition that fails at run time (a missing field, a string
where a number was expected) is counted per rule and logged once per kind; the reading
is skipped for that rule only.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import string
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.alarms.config import AlarmsSection
from gateway.alarms.expr import RuleRuntimeError
from gateway.alarms.model import (
    KEY_VALUE_MAX,
    AlarmAction,
    AlarmCommand,
    AlarmCommandRefused,
    AlarmState,
    Transition,
    bounded_name,
)
from gateway.alarms.rules import CompiledRule
from gateway.alarms.state import Alarm, alarm_id
from gateway.jsonsafe import finite_field
from gateway.problems import ProblemLog
from gateway.reading import FieldValue, Reading

log = logging.getLogger("iotgw.alarms")

Key = tuple[str, str]
_EPS = 1e-6
MESSAGE_MAX = 1024
"""A rendered message longer than this is cut (ending in ``…``). Widths in a template are
bounded at load (:data:`gateway.alarms.config.MESSAGE_WIDTH_MAX`), values are not: a
``{code}`` of a 256 KiB MQTT string would be published, journaled and buffered whole with
every transition."""


@dataclass(frozen=True)
class DeviceInfo:
    """What the engine knows of a configured device."""

    tags: Mapping[str, str] = field(default_factory=dict)
    private: frozenset[str] = frozenset()
    """Fields and tags the device pseudonymises (lists are hashed for them)."""
    interval: float | None = None


@dataclass
class EngineCounters:
    """For metrics and ``iotgw status`` (the outputs side reads them)."""

    readings: int = 0
    evaluations: int = 0
    transitions: Counter[str] = field(default_factory=Counter)
    """By cause."""
    rule_errors: Counter[str] = field(default_factory=Counter)
    """By rule id."""
    chatter: int = 0
    raises: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    """Times of recent raises (flood detection)."""


class _Values(dict[str, Any]):
    """Message templates: a name the reading lacks shows as ``?``."""

    def __missing__(self, key: str) -> str:
        return "?"


def _render(template: str, values: Mapping[str, Any]) -> str:
    if not template:
        return ""
    try:
        text = string.Formatter().vformat(template, (), _Values(values))
    except (ValueError, TypeError, KeyError, IndexError):
        return template
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX - 1] + "…"


class Engine:
    def __init__(self, rules: Sequence[CompiledRule], *,
                 devices: Mapping[str, DeviceInfo] | None = None,
                 settings: AlarmsSection | None = None,
                 uplink_lost: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings or AlarmsSection()
        self.devices: dict[str, DeviceInfo] = dict(devices or {})
        self.counters = EngineCounters()
        self.alarms: dict[Key, Alarm] = {}
        self._uplink_lost = uplink_lost
        self._device_state: dict[str, str] = {}
        self._rules: dict[str, CompiledRule] = {}
        self._index: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}
        self._state_rules: dict[str, tuple[CompiledRule, ...]] = {}
        self._timers: list[tuple[float, int, str, Key]] = []
        """(due, tie-break, kind, alarm key): a heap."""
        self._timer_seq = itertools.count()
        self._out: list[Transition] = []
        self._dirty: dict[Key, Alarm] = {}
        self._no_idle_until = float("-inf")
        self._removed: list[Key] = []
        self._journaled: dict[Key, int] = {}
        """The last journaled seq of each alarm the engine let go (a removed rule, at a
        reload or at the restore): one made again continues from it, since (alarm_id,
        seq) names one transition and the journal refuses a second one."""
        self._problems = ProblemLog(log)
        self.produced = 0
        """Transitions decided since start (the service counts commits against it)."""
        self._set_rules(rules)

    # -- rules -------------------------------------------------------------------------

    @property
    def rules(self) -> Mapping[str, CompiledRule]:
        return self._rules

    def _set_rules(self, rules: Sequence[CompiledRule]) -> None:
        self._rules = {r.id: r for r in rules if r.config.enabled}
        self._index.clear()
        self._state_rules.clear()

    def start(self, now: float) -> None:
        """Create the alarms of stale rules for every configured device (the silence is
        counted from now) and arm every timer."""
        for rule in self._rules.values():
            if rule.config.stale is None:
                continue
            for device_id, info in self.devices.items():
                # installer tags only: a reading's own tags are not known before it comes
                if rule.selects_device(device_id) and all(
                        key in info.tags and match(info.tags[key])
                        for key, match in rule.tag_match):
                    alarm = self._alarm(rule, device_id, device_id)
                    if alarm is not None and alarm.last_seen is None:
                        alarm.last_seen = now
        self._rearm(now)

    def replace_rules(self, rules: Sequence[CompiledRule],
                      devices: Mapping[str, DeviceInfo], now: float) -> None:
        """Reload: unchanged rules keep everything; changed ones keep operator state
        (ack, shelve, out of service, an active alarm) but start their timers, windows
        and counts afresh; removed ones are returned to normal and dropped."""
        old = self._rules
        self.devices = dict(devices)
        self._set_rules(rules)
        for key, alarm in list(self.alarms.items()):
            rule = self._rules.get(alarm.rule)
            if rule is None:
                self._remove(alarm, now)
            elif rule.digest != old[alarm.rule].digest if alarm.rule in old else True:
                alarm.pending_on = alarm.pending_off = None
                alarm.extra = None
                alarm.severity = rule.config.severity
                alarm.latched = rule.config.latched
                alarm.dirty = True
                self._dirty[key] = alarm
        self.start(now)

    def _remove(self, alarm: Alarm, now: float) -> None:
        previous = alarm.state
        alarm.active = alarm.condition = alarm.shelved = alarm.suppressed = False
        alarm.out_of_service = False
        alarm.acked = True
        alarm.pending_on = alarm.pending_off = alarm.realarm_at = None
        alarm.extra = None
        if previous is AlarmState.NORMAL:
            self._mark(alarm)  # saved without its timers; nothing to announce
        else:
            self._emit(alarm, previous, "removed", now)
        self._let_go(alarm)
        self._removed.append((alarm.rule, alarm.device))

    def restore(self, rows: Iterable[tuple[str, str, int, str, dict[str, Any], float,
                                            FieldValue | None, str, int]], now: float) -> None:
        """Alarms as the journal kept them: (rule, device, seq, rule digest, state row,
        since, value, message, severity). Rules no longer configured are removed (a
        transition, with the severity the alarm had: a reload's removal keeps it too);
        the others take their rule's severity."""
        for rule_id, device, seq, digest, row, since, value, message, severity in rows:
            rule = self._rules.get(rule_id)
            alarm = Alarm(rule_id, device, alarm_id(rule_id, device),
                          rule.config.severity if rule else severity,
                          dict(self._tags_of(device)), seq=seq, since=since, value=value,
                          message=message)
            alarm.load_row(row, keep_timers=rule is not None and rule.digest == digest)
            self.alarms[alarm.pair] = alarm
            if rule is None:
                if alarm.state is not AlarmState.NORMAL:
                    self._remove(alarm, now)
                else:
                    self._let_go(alarm)
                continue
            alarm.latched = rule.config.latched
            if rule.digest != digest:
                alarm.dirty = True
                self._dirty[alarm.pair] = alarm

    def _let_go(self, alarm: Alarm) -> None:
        """Drop ``alarm`` from memory, remembering its seq (its saved row keeps it too)."""
        del self.alarms[alarm.pair]
        if alarm.seq:
            self._journaled[alarm.pair] = alarm.seq

    # -- outputs -----------------------------------------------------------------------

    def take(self) -> tuple[list[Transition], list[Alarm]]:
        """Transitions since the last call, in order, and every alarm whose saved state
        changed (timers started or cancelled included)."""
        out, self._out = self._out, []
        dirty = list(self._dirty.values())
        self._dirty.clear()
        for alarm in dirty:
            alarm.dirty = False
        return out, dirty

    def take_removed(self) -> list[Key]:
        out, self._removed = self._removed, []
        return out

    @property
    def pending_output(self) -> bool:
        return bool(self._out or self._dirty)

    def checkpoint(self) -> list[Alarm]:
        """Alarms whose count/window state changed since the last call: saved
        periodically, not at every reading."""
        changed = [a for a in self.alarms.values() if a.extra_changed]
        for alarm in changed:
            alarm.extra_changed = False
        return changed

    # -- readings ----------------------------------------------------------------------

    def _rules_for(self, device_id: str, measurement: str) -> tuple[CompiledRule, ...]:
        key = (device_id, measurement)
        found = self._index.get(key)
        if found is None:
            found = tuple(r for r in self._rules.values()
                          if r.selects_device(device_id) and (
                              r.measurement_match is None or r.measurement_match(measurement)))
            if len(self._index) > 100_000:
                self._index.clear()
            self._index[key] = found
        return found

    def process(self, device_id: str, readings: Sequence[Reading], now: float) -> None:
        """Evaluate tagged readings of one device (as the pipeline accepted them); timers
        due by ``now`` fire first (a late wake-up must not let a reading decide before
        them: a ``for:`` due at 10 s and a reading at 15 s that ends the condition is a
        raise at 10 s and a clear at 15 s, not nothing)."""
        self.advance(now)
        counters = self.counters
        counters.readings += len(readings)
        uplink: bool | None = None
        for reading in readings:
            rules = self._rules_for(device_id, reading.measurement)
            if not rules:
                continue
            fields = reading.fields
            values: dict[str, Any] | None = None
            for rule in rules:
                trigger = rule.trigger
                if trigger and trigger.isdisjoint(fields):
                    continue
                if rule.tag_match and not rule.selects(reading.measurement, reading.tags):
                    continue
                if values is None:
                    if uplink is None:
                        uplink = self._uplink_lost()
                    values = dict(reading.tags)
                    values.update(fields)
                    values["device"] = device_id
                    values["measurement"] = reading.measurement
                    values["device_state"] = self._device_state.get(device_id, "online")
                    values["uplink_lost"] = uplink
                counters.evaluations += 1
                try:
                    self._evaluate(rule, device_id, values, now)
                except RuleRuntimeError as exc:
                    self._rule_failed(rule, exc)

    def device_state(self, device_id: str, state: str, now: float) -> None:
        """A device changed state (online, offline, error): rules reading only
        ``device_state`` (and other engine names) are evaluated (after the timers due
        by ``now``)."""
        self.advance(now)
        self._device_state[device_id] = state
        rules = self._state_rules.get(device_id)
        if rules is None:
            rules = tuple(r for r in self._rules.values()
                          if r.uses_state_only and r.selects_device(device_id))
            self._state_rules[device_id] = rules
        values = {"device": device_id, "measurement": "", "device_state": state,
                  "uplink_lost": self._uplink_lost()}
        for rule in rules:
            try:
                self._evaluate(rule, device_id, values, now)
            except RuleRuntimeError as exc:
                self._rule_failed(rule, exc)

    def _rule_failed(self, rule: CompiledRule, exc: RuleRuntimeError) -> None:
        self.counters.rule_errors[rule.id] += 1
        self._problems.report(f"rule:{rule.id}:{exc.kind}",
                              f"rule {rule.id}: {exc} (counted; logged once)",
                              level=logging.WARNING)

    def _tags_of(self, device_id: str) -> Mapping[str, str]:
        info = self.devices.get(device_id)
        return info.tags if info is not None else {}

    def _alarm(self, rule: CompiledRule, device: str, source: str,
               now: float | None = None) -> Alarm | None:
        key = (rule.id, device)
        alarm = self.alarms.get(key)
        if alarm is None:
            if len(self.alarms) >= self.settings.max_alarms and now is not None:
                self._evict_idle(now)
            if len(self.alarms) >= self.settings.max_alarms:
                self._problems.report("max_alarms", f"more than alarms.max_alarms "
                                      f"({self.settings.max_alarms}) alarms: new ones ignored")
                return None
            alarm = Alarm(rule.id, device, alarm_id(rule.id, device), rule.config.severity,
                          dict(self._tags_of(source)), latched=rule.config.latched,
                          seq=self._journaled.get(key, 0))
            self.alarms[key] = alarm
        return alarm

    def _evict_idle(self, now: float) -> None:
        """At alarms.max_alarms: drop the alarms that never raised and hold nothing. A
        count keyed by a reading's value (``key: card``) makes one alarm per value ever
        seen; kept for ever, they filled the limit and every new alarm (a leak) was
        ignored. Only those with nothing journaled since they were made go (seq 0, or
        the seq of a removed alarm they continue), so one made again later cannot repeat
        a seq."""
        if now < self._no_idle_until:  # the last scan found none: not at every reading
            return
        idle = [key for key, alarm in self.alarms.items() if self._idle(alarm, now)]
        if not idle:
            self._no_idle_until = now + 10.0
        for key in idle:
            del self.alarms[key]
            self._dirty.pop(key, None)

    def _idle(self, alarm: Alarm, now: float) -> bool:
        if alarm.seq != self._journaled.get(alarm.pair, 0) or alarm.condition or \
                alarm.out_of_service or alarm.shelved or alarm.suppressed or \
                alarm.pending_on is not None or alarm.pending_off is not None or \
                alarm.realarm_at is not None:
            return False
        if alarm.extra is None:
            return True
        rule = self._rules.get(alarm.rule)
        events = alarm.extra.get("events")
        if rule is None or rule.config.count is None or not isinstance(events, list):
            return False  # a window's history, a stale timer: device alarms, bounded
        return not events or events[-1] <= now - rule.config.count.within

    def _evaluate(self, rule: CompiledRule, device_id: str, values: dict[str, Any],
                  now: float) -> None:
        cfg = rule.config
        if cfg.stale is not None:
            self._seen(rule, device_id, now)
            return
        if cfg.count is not None and cfg.count.key != "device":
            key_value = values.get(cfg.count.key)
            if key_value is None:
                raise RuleRuntimeError(f"missing:{cfg.count.key}",
                                       f"no value named {cfg.count.key!r} (count key)")
            alarm = self._keyed_alarm(rule, str(key_value), device_id, now)
        else:
            alarm = self._alarm(rule, device_id, device_id, now)
        if alarm is None:
            return
        if rule.lists.raw or rule.lists.hashed:
            info = self.devices.get(device_id)
            values = {**values, **rule.lists.for_device(info.private if info else frozenset())}
        if rule.suppress is not None:
            try:
                suppressed = rule.suppress.truth(values)
            except RuleRuntimeError as exc:
                self._rule_failed(rule, exc)
                suppressed = False
            if suppressed != alarm.suppressed:
                self._set_suppressed(alarm, suppressed, now)
        if cfg.window is not None:
            values = {**values, **self._window(alarm, rule, values, now)}
        if rule.schedule is not None and not rule.schedule.active(now):
            if alarm.condition or alarm.pending_on is not None:
                self._condition(alarm, rule, False, values, now)
            self._arm(rule.schedule.next_change(now), "schedule", alarm)
            return
        when = rule.when
        assert when is not None
        if cfg.count is not None:
            self._count(alarm, rule, when.truth(values), values, now)
            return
        if not alarm.condition:
            self._debounce_on(alarm, rule, when.truth(values), values, now)
        else:
            clear = rule.clear
            off = clear.truth(values) if clear is not None else not when.truth(values)
            self._debounce_off(alarm, rule, off, values, now)

    def _keyed_alarm(self, rule: CompiledRule, name: str, source: str,
                     now: float) -> Alarm | None:
        """The alarm of a count keyed by a reading's value: named by
        :func:`bounded_name` of it (a topic level, an alarm id and a ``cmd/alarm`` body
        stay within their limits whatever the reading holds), the value itself kept, up
        to KEY_VALUE_MAX characters, in ``key_value``."""
        bounded = bounded_name(name)
        alarm = self._alarm(rule, bounded, source, now)
        if alarm is not None and bounded != name and alarm.key_value is None:
            alarm.key_value = name[:KEY_VALUE_MAX]
        return alarm

    def _value_of(self, rule: CompiledRule, values: Mapping[str, Any]) -> FieldValue | None:
        """The value that decides a raise or clear; a non-finite number (a float register
        holding NaN) is None, as JSON has no such value."""
        when = rule.when
        if when is not None and when.threshold is not None:
            v = values.get(when.threshold.field)
            if v is not None:
                return finite_field(v)
        for name in sorted(rule.trigger):
            if name in values:
                return finite_field(values[name])
        return None

    def _debounce_on(self, alarm: Alarm, rule: CompiledRule, on: bool,
                     values: Mapping[str, Any], now: float) -> None:
        delay = rule.config.for_
        if on:
            if delay <= 0:
                alarm.value = self._value_of(rule, values)
                self._condition(alarm, rule, True, values, now)
                return
            # the latest reading that holds the condition; the alarm's own value and
            # message change only if the on-delay runs out (_fire_on)
            alarm.pending_value = self._value_of(rule, values)
            alarm.pending_message = _render(rule.config.message, values)
            if alarm.pending_on is None:
                alarm.pending_on = now
                self._mark(alarm)
                self._arm(now + delay, "on", alarm)
                if rule.schedule is not None:
                    self._arm(rule.schedule.next_change(now), "schedule", alarm)
        elif alarm.pending_on is not None:
            alarm.pending_on = None
            self._mark(alarm)

    def _debounce_off(self, alarm: Alarm, rule: CompiledRule, off: bool,
                      values: Mapping[str, Any], now: float) -> None:
        delay = rule.config.off_delay
        if off:
            if delay <= 0:
                alarm.value = self._value_of(rule, values)
                self._condition(alarm, rule, False, values, now)
            elif alarm.pending_off is None:
                alarm.pending_off = now
                # the value that began the clear; the alarm's own value changes only if
                # the off-delay runs out (_fire_off), not when the clear is interrupted
                alarm.pending_value = self._value_of(rule, values)
                self._mark(alarm)
                self._arm(now + delay, "off", alarm)
        elif alarm.pending_off is not None:
            alarm.pending_off = None
            self._mark(alarm)

    # -- the lifecycle -------------------------------------------------------------------

    def _mark(self, alarm: Alarm) -> None:
        alarm.dirty = True
        self._dirty[alarm.pair] = alarm

    def _emit(self, alarm: Alarm, previous: AlarmState, cause: str, now: float,
              client: str | None = None) -> None:
        alarm.seq += 1
        if alarm.state is not previous or cause in ("raise", "clear"):
            alarm.since = now
        self._mark(alarm)
        self._out.append(Transition(alarm.snapshot(), previous, cause, now, client))
        self.produced += 1
        self.counters.transitions[cause] += 1
        if cause == "raise":
            self.counters.raises.append(now)

    @property
    def overlay_names(self) -> tuple[str, ...]:
        return ("out_of_service", "shelved", "suppressed")

    def _hidden(self, alarm: Alarm) -> bool:
        return alarm.out_of_service or alarm.shelved or alarm.suppressed

    def _condition(self, alarm: Alarm, rule: CompiledRule, on: bool,
                   values: Mapping[str, Any] | None, now: float) -> None:
        """The debounced condition changed."""
        alarm.pending_on = alarm.pending_off = alarm.pending_value = None
        alarm.pending_message = ""
        alarm.condition = on
        self._mark(alarm)
        if values is not None and rule.config.message:
            alarm.message = _render(rule.config.message, values)
        previous = alarm.state
        if on:
            self._changed(alarm, rule, now)
            if rule.schedule is not None:  # the end of the span clears it
                self._arm(rule.schedule.next_change(now), "schedule", alarm)
            if self._hidden(alarm):
                alarm.active = True
                return
            if alarm.active:
                return  # (latched, raised again: nothing new to say)
            alarm.active = True
            alarm.acked = False
            if rule.config.realarm:
                alarm.realarm_at = now + rule.config.realarm
                self._arm(alarm.realarm_at, "realarm", alarm)
            self._emit(alarm, previous, "raise", now)
            return
        if alarm.latched and alarm.active:
            return  # stays active until reset
        self._changed(alarm, rule, now)
        if alarm.shelved and alarm.shelved_until is None:
            # a one-shot shelve ends when the alarm returns to normal
            alarm.shelved = False
            alarm.active = False
            alarm.acked = True
            self._emit(alarm, previous, "unshelve", now)
            return
        if self._hidden(alarm):
            alarm.active = False
            return
        if not alarm.active:
            return
        alarm.active = False
        alarm.realarm_at = None
        self._emit(alarm, previous, "clear", now)

    def _changed(self, alarm: Alarm, rule: CompiledRule, now: float) -> None:
        """Chatter: too many raises/clears within the window."""
        spec = rule.config.chatter
        alarm.changes.append(now)
        recent = sum(1 for t in alarm.changes if t > now - spec.within)
        if recent > spec.transitions and not alarm.chatter:
            alarm.chatter = True
            self.counters.chatter += 1
            self._emit(alarm, alarm.state, "chatter", now)
            self._arm(now + spec.within, "chatter", alarm)

    def _reveal(self, alarm: Alarm) -> None:
        """Leaving an overlay: show the condition as it stands, unacknowledged."""
        alarm.active = alarm.condition or (alarm.latched and alarm.active)
        alarm.acked = not alarm.active

    def _set_suppressed(self, alarm: Alarm, on: bool, now: float) -> None:
        previous = alarm.state
        alarm.suppressed = on
        if not on and not (alarm.shelved or alarm.out_of_service):
            self._reveal(alarm)
        self._emit(alarm, previous, "suppress" if on else "unsuppress", now)

    def command(self, command: AlarmCommand, now: float) -> Alarm:
        """Apply an operator command; raises :class:`AlarmCommandRefused`. A count key's
        value longer than NAME_MAX names its alarm by its :func:`bounded_name`: either
        that name or the value itself finds it. Timers due by ``now`` fire first."""
        self.advance(now)
        alarm = self.alarms.get((command.rule, command.device)) or self.alarms.get(
            (command.rule, bounded_name(command.device)))
        if alarm is None:
            rule = self._rules.get(command.rule)
            if rule is None:
                raise AlarmCommandRefused(f"unknown rule {command.rule!r}")
            if command.action not in (AlarmAction.OUT_OF_SERVICE, AlarmAction.SHELVE):
                raise AlarmCommandRefused(
                    f"no alarm for rule {command.rule!r} and device {command.device!r}")
            # An alarm may be taken out of service (or shelved) before it ever raised.
            if not rule.selects_device(command.device):
                raise AlarmCommandRefused(
                    f"rule {command.rule!r} does not select device {command.device!r}")
            # Only a configured device: a glob also matches names no device has (a typo,
            # or "meter-/#", which is no MQTT topic level), and each would be an alarm
            # kept for ever. Alarms named by a count key come from readings alone.
            keyed = rule.config.count is not None and rule.config.count.key != "device"
            if keyed or command.device not in self.devices:
                raise AlarmCommandRefused(
                    f"unknown device {command.device!r}: no alarm to take out of service "
                    "or shelve before it raised")
            alarm = self._alarm(rule, command.device, command.device)
            if alarm is None:
                raise AlarmCommandRefused("too many alarms (alarms.max_alarms)")
        handler = _COMMANDS[command.action]
        previous = alarm.state
        handler(self, alarm, command, now)
        self._emit(alarm, previous, command.action.value, now, command.client)
        return alarm

    def _ack(self, alarm: Alarm, command: AlarmCommand, now: float) -> None:
        if alarm.acked or self._hidden(alarm):
            raise AlarmCommandRefused(f"nothing to acknowledge: the alarm is {alarm.state}")
        alarm.acked = True
        alarm.realarm_at = None

    def _shelve(self, alarm: Alarm, command: AlarmCommand, now: float) -> None:
        if alarm.out_of_service:
            raise AlarmCommandRefused("the alarm is out of service")
        if command.duration is not None and not (
                math.isfinite(command.duration) and command.duration > 0):
            raise AlarmCommandRefused(
                f"a shelve lasts a positive, finite number of seconds, not {command.duration}")
        alarm.shelved = True
        alarm.shelved_until = None if command.duration is None else now + command.duration
        alarm.realarm_at = None
        if alarm.shelved_until is not None:
            self._arm(alarm.shelved_until, "shelve", alarm)

    def _unshelve(self, alarm: Alarm, command: AlarmCommand | None, now: float) -> None:
        if not alarm.shelved:
            raise AlarmCommandRefused(f"the alarm is not shelved ({alarm.state})")
        alarm.shelved = False
        alarm.shelved_until = None
        if not (alarm.suppressed or alarm.out_of_service):
            self._reveal(alarm)
            self._arm_realarm(alarm, now)

    def _reset(self, alarm: Alarm, command: AlarmCommand, now: float) -> None:
        if not alarm.latched:
            raise AlarmCommandRefused("only latched alarms are reset; this one clears "
                                      "by itself")
        if not alarm.active:
            raise AlarmCommandRefused(f"nothing to reset: the alarm is {alarm.state}")
        if alarm.condition:
            raise AlarmCommandRefused("the condition is still present; reset after it clears")
        alarm.active = False
        alarm.acked = True
        alarm.realarm_at = None

    def _out_of_service(self, alarm: Alarm, command: AlarmCommand, now: float) -> None:
        if alarm.out_of_service:
            raise AlarmCommandRefused("the alarm is already out of service")
        alarm.out_of_service = True
        alarm.shelved = False
        alarm.shelved_until = None
        alarm.realarm_at = None

    def _in_service(self, alarm: Alarm, command: AlarmCommand, now: float) -> None:
        if not alarm.out_of_service:
            raise AlarmCommandRefused(f"the alarm is in service ({alarm.state})")
        alarm.out_of_service = False
        if not alarm.suppressed:
            self._reveal(alarm)
            self._arm_realarm(alarm, now)

    def _arm_realarm(self, alarm: Alarm, now: float) -> None:
        rule = self._rules.get(alarm.rule)
        if rule is not None and rule.config.realarm and alarm.active and not alarm.acked:
            alarm.realarm_at = now + rule.config.realarm
            self._arm(alarm.realarm_at, "realarm", alarm)

    # -- stale, count, window ------------------------------------------------------------

    def _stale_after(self, rule: CompiledRule, device_id: str) -> float:
        spec = rule.config.stale
        assert spec is not None
        if spec.seconds is not None:
            return spec.seconds
        info = self.devices.get(device_id)
        interval = info.interval if info is not None and info.interval else 60.0
        return (spec.factor or 3.0) * interval

    def _seen(self, rule: CompiledRule, device_id: str, now: float) -> None:
        alarm = self._alarm(rule, device_id, device_id)
        if alarm is None:
            return
        alarm.last_seen = now
        if alarm.condition:
            alarm.value = None
            self._condition(alarm, rule, False, None, now)
        self._arm(now + self._stale_after(rule, device_id), "stale", alarm)

    def _count(self, alarm: Alarm, rule: CompiledRule, hit: bool, values: Mapping[str, Any],
               now: float) -> None:
        spec = rule.config.count
        assert spec is not None
        extra = alarm.extra if alarm.extra is not None else {"events": []}
        events: list[float] = extra["events"]
        cutoff = now - spec.within
        while events and events[0] <= cutoff:
            events.pop(0)
        if hit:
            events.append(now)
            if len(events) > spec.n:
                del events[: len(events) - spec.n]
            alarm.value = len(events)
        alarm.extra = extra
        alarm.extra_changed = True
        if len(events) >= spec.n and not alarm.condition:
            alarm.message = _render(rule.config.message, {**values, "count": len(events)})
            self._condition(alarm, rule, True, values, now)
        elif len(events) < spec.n and alarm.condition:
            self._condition(alarm, rule, False, None, now)
        if events:
            self._arm(events[0] + spec.within, "count", alarm)

    def _window(self, alarm: Alarm, rule: CompiledRule, values: Mapping[str, Any],
                now: float) -> dict[str, Any]:
        """Add the sample to the alarm's buckets and return the aggregates.

        A bucket is [start, min, max, sum, n, first, first_t, last, last_t]; the window
        keeps ``buckets`` of them, so memory does not grow with the reading rate."""
        spec = rule.config.window
        assert spec is not None
        sample = values.get(spec.field)
        if type(sample) not in (int, float):
            raise RuleRuntimeError("type", f"window field {spec.field!r} is not a number")
        extra: dict[str, Any] = alarm.extra if alarm.extra is not None else {
            "buckets": [], "began": now}
        buckets: list[list[float]] = extra["buckets"]
        width = spec.over / spec.buckets
        start = math.floor(now / width) * width
        v = float(sample)  # type: ignore[arg-type]
        if buckets and buckets[-1][0] == start:
            b = buckets[-1]
            b[1] = min(b[1], v)
            b[2] = max(b[2], v)
            b[3] += v
            b[4] += 1
            b[7], b[8] = v, now
        else:
            buckets.append([start, v, v, v, 1, v, now, v, now])
        cutoff = now - spec.over
        while buckets and buckets[0][0] + width <= cutoff:
            buckets.pop(0)
        alarm.extra = extra
        alarm.extra_changed = True
        n = sum(b[4] for b in buckets)
        total = sum(b[3] for b in buckets)
        first, first_t = buckets[0][5], buckets[0][6]
        last, last_t = buckets[-1][7], buckets[-1][8]
        span = last_t - first_t
        return {"min": min(b[1] for b in buckets), "max": max(b[2] for b in buckets),
                "sum": total, "count": n, "avg": total / n, "delta": last - first,
                "rate": (last - first) / span if span > 0 else 0.0,
                "full": now - extra["began"] >= spec.over}

    # -- timers --------------------------------------------------------------------------

    def _arm(self, due: float, kind: str, alarm: Alarm) -> None:
        entry: tuple[float, int, str, Key] = (due, next(self._timer_seq), kind, alarm.pair)
        heapq.heappush(self._timers, entry)

    def _rearm(self, now: float) -> None:
        """Arm the timers every alarm's saved state implies (at start, after reload)."""
        self._timers.clear()
        for alarm in self.alarms.values():
            rule = self._rules.get(alarm.rule)
            if rule is None:
                continue
            cfg = rule.config
            if alarm.pending_on is not None:
                self._arm(alarm.pending_on + cfg.for_, "on", alarm)
            if alarm.pending_off is not None:
                self._arm(alarm.pending_off + cfg.off_delay, "off", alarm)
            if alarm.shelved and alarm.shelved_until is not None:
                self._arm(alarm.shelved_until, "shelve", alarm)
            if alarm.realarm_at is not None:
                self._arm(alarm.realarm_at, "realarm", alarm)
            if alarm.chatter:
                self._arm(now, "chatter", alarm)
            if cfg.stale is not None:
                if alarm.last_seen is None:
                    alarm.last_seen = now
                self._arm(alarm.last_seen + self._stale_after(rule, alarm.device), "stale",
                          alarm)
            if cfg.count is not None and alarm.extra and alarm.extra.get("events"):
                self._arm(alarm.extra["events"][0] + cfg.count.within, "count", alarm)
            if rule.schedule is not None and alarm.condition:
                self._arm(now, "schedule", alarm)

    def next_due(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def advance(self, now: float) -> None:
        """Fire every timer due at ``now``; a stale entry (its timer was cancelled or
        moved) is recognised by checking the alarm's own fields and skipped."""
        timers = self._timers
        while timers and timers[0][0] <= now + _EPS:
            due, _, kind, key = heapq.heappop(timers)
            alarm = self.alarms.get(key)
            rule = self._rules.get(key[0])
            if alarm is None or rule is None:
                continue
            _TIMERS[kind](self, alarm, rule, due, now)

    def _fire_on(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        if alarm.pending_on is not None and not alarm.condition \
                and alarm.pending_on + rule.config.for_ <= now + _EPS:
            due = alarm.pending_on + rule.config.for_
            if rule.schedule is not None and not rule.schedule.active(due):
                alarm.pending_on = None  # the span ended first
                self._mark(alarm)
                return
            alarm.value, alarm.message = alarm.pending_value, alarm.pending_message
            self._condition(alarm, rule, True, None, due)

    def _fire_off(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        if alarm.pending_off is not None and alarm.condition \
                and alarm.pending_off + rule.config.off_delay <= now + _EPS:
            alarm.value = alarm.pending_value
            self._condition(alarm, rule, False, None, alarm.pending_off + rule.config.off_delay)

    # Every timer's transition is stamped with the time it fell due, computed from the
    # alarm's own fields where they say it (a heap entry may be one the alarm has moved
    # on from), not with the time it was noticed: ``iotgw rules test`` notices them at
    # the next reading, a busy gateway late. Readings and commands fire due timers
    # first (:meth:`advance`), so nothing later is decided before them.

    def _fire_shelve(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        if alarm.shelved and alarm.shelved_until is not None \
                and alarm.shelved_until <= now + _EPS:
            at = alarm.shelved_until
            previous = alarm.state
            self._unshelve(alarm, None, at)
            self._emit(alarm, previous, "unshelve", at)

    def _fire_realarm(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        if alarm.realarm_at is None or alarm.realarm_at > now + _EPS:
            return
        if alarm.state is AlarmState.ACTIVE_UNACKED and rule.config.realarm:
            at = alarm.realarm_at
            alarm.realarm_at = at + rule.config.realarm
            self._emit(alarm, alarm.state, "realarm", at)
            self._arm(alarm.realarm_at, "realarm", alarm)
        else:
            alarm.realarm_at = None

    def _fire_stale(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        after = self._stale_after(rule, alarm.device)
        if alarm.last_seen is None or alarm.condition or alarm.last_seen + after > now + _EPS:
            return
        alarm.value = None
        alarm.message = rule.config.message or f"no readings for {after:g} s"
        self._condition(alarm, rule, True, None, alarm.last_seen + after)

    def _fire_count(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        spec = rule.config.count
        events = alarm.extra.get("events") if alarm.extra is not None else None
        if spec is None or not events or events[0] + spec.within > now + _EPS:
            return  # nothing left to expire, or a later entry is armed for it
        self._count(alarm, rule, False, {}, events[0] + spec.within)

    def _fire_chatter(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        spec = rule.config.chatter
        if not alarm.chatter:
            return
        recent = [t for t in alarm.changes if t > due - spec.within]
        if len(recent) > spec.transitions // 2:
            self._arm(recent[0] + spec.within, "chatter", alarm)
            return
        alarm.chatter = False
        self._emit(alarm, alarm.state, "chatter", due)

    def _fire_schedule(self, alarm: Alarm, rule: CompiledRule, due: float, now: float) -> None:
        if rule.schedule is not None and not rule.schedule.active(due) and (
                alarm.condition or alarm.pending_on is not None):
            self._condition(alarm, rule, False, None, due)


_COMMANDS: dict[AlarmAction, Callable[[Engine, Alarm, AlarmCommand, float], None]] = {
    AlarmAction.ACK: Engine._ack,
    AlarmAction.SHELVE: Engine._shelve,
    AlarmAction.UNSHELVE: Engine._unshelve,
    AlarmAction.RESET: Engine._reset,
    AlarmAction.OUT_OF_SERVICE: Engine._out_of_service,
    AlarmAction.IN_SERVICE: Engine._in_service,
}

_TIMERS: dict[str, Callable[[Engine, Alarm, CompiledRule, float, float], None]] = {
    "on": Engine._fire_on,
    "off": Engine._fire_off,
    "shelve": Engine._fire_shelve,
    "realarm": Engine._fire_realarm,
    "stale": Engine._fire_stale,
    "count": Engine._fire_count,
    "chatter": Engine._fire_chatter,
    "schedule": Engine._fire_schedule,
}
