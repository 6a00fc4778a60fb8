"""The ``rules:`` / ``rules_files:`` / ``alarms:`` config: what an installer may write.

Each rule is checked on its own here (its expressions compile, its durations are bounded,
``deadband`` has a threshold to move); checks that need the devices (selectors, field
names and types) are in :mod:`gateway.alarms.checks`. See docs/alarms.md for the language.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.alarms.expr import ExpressionError, compile_expression
from gateway.config.types import Duration, StrictModel, parse_duration

RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
WEEK = 7 * 86400.0
_SPAN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_FACTOR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$")
MESSAGE_WIDTH_MAX = 100
"""Largest width or precision in a message placeholder (``{level:>8.1f}``): the probe's
``{level:>30000000}`` made a 30 MB message per transition (published, journaled and
buffered: 448 MB RSS), ``{f0:>999999999}`` took 3 GB in ``iotgw rules test``."""
_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?"
                   r"[bcdeEfFgGnosxX%]?", re.DOTALL)
"""Python's format-spec mini-language: [[fill]align][sign][z][#][0][width][grouping]
[.precision][type]."""


def _expression(text: str) -> str:
    try:
        compile_expression(text)
    except ExpressionError as exc:
        raise ValueError(str(exc)) from None
    return text


Condition = Annotated[str, Field(min_length=1, max_length=2000),
                      BeforeValidator(lambda v: _expression(v) if isinstance(v, str) else v)]
"""An expression (docs/alarms.md); compiled at load, so a syntax error is a config error."""


class CountSpec(StrictModel):
    """``count: {n: 5, within: 2m, key: device}``: raise when ``when`` was true for ``n``
    readings within ``within`` for one key (a tag or field value, or the device)."""

    n: int = Field(ge=1, le=100_000)
    within: Duration = Field(gt=0, le=WEEK)
    key: str = Field(default="device", min_length=1, max_length=64,
                     description="device, or a tag/field whose value names the alarm")


class WindowSpec(StrictModel):
    """A sliding window over one numeric field; ``when`` may then use min, max, avg,
    sum, delta, rate, count and full (true once the window spans ``over``)."""

    field: str = Field(min_length=1, max_length=64)
    over: Duration = Field(ge=1, le=WEEK)
    buckets: int = Field(default=60, ge=2, le=3600,
                         description="resolution: the window is kept as this many buckets")


def _stale_after(value: Any) -> Any:
    if isinstance(value, str) and _FACTOR.match(value):
        return {"factor": float(_FACTOR.match(value)[1])}  # type: ignore[index]
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return {"seconds": parse_duration(value)}
    return value


class StaleSpec(StrictModel):
    """``stale: 3x`` (times the device's interval) or ``stale: 90s``: the device (or with
    ``field``, one field) sent nothing for that long."""

    factor: float | None = Field(default=None, ge=1, le=1000)
    seconds: Duration | None = Field(default=None, ge=0.1, le=WEEK)
    field: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "after" in data:
            data = dict(data)
            data.update(_stale_after(data.pop("after")))
        return _stale_after(data)

    @model_validator(mode="after")
    def _one(self) -> StaleSpec:
        if (self.factor is None) == (self.seconds is None):
            raise ValueError("give a duration (90s) or a multiple of the interval (3x)")
        return self


class ChatterSpec(StrictModel):
    """More than ``transitions`` raises and clears within ``within``: the alarm is flagged
    as chattering (and counted) until it calms down."""

    transitions: int = Field(default=10, ge=2, le=10_000)
    within: Duration = Field(default=600.0, ge=1, le=WEEK)


class ListSpec(StrictModel):
    """A set of values read from a file, one per line (``#`` comments); reloaded with the
    config. ``field`` names what it is matched against: where a device pseudonymises that
    field, the list is hashed with the same key at load and only the hashes are kept."""

    file: Path
    field: str | None = Field(default=None, min_length=1, max_length=64)


class RuleAction(StrictModel):
    """An allow-listed device write on raise or clear (executed by the outputs side)."""

    on: Literal["raise", "clear"]
    point: str = Field(min_length=1, max_length=64)
    value: bool | int | float | str
    device: str | None = Field(default=None, description="default: the alarm's device")
    min_interval: Duration = Field(default=60.0, ge=0, le=86400,
                                   description="at most one write per alarm this often")


class RuleConfig(StrictModel):
    """One alarm rule; one alarm per (rule, device) it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True,
                              allow_inf_nan=False, populate_by_name=True)

    id: str = Field(pattern=RULE_ID_PATTERN, max_length=64)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True
    devices: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=1000,
        description="device ids or globs (meter-*); none: every device")
    measurement: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, description="only readings of these measurements (globs)")
    tags: dict[str, str] = Field(default_factory=dict,
                                 description="only devices/readings with these tag values (globs)")
    when: Condition | None = None
    for_: Duration = Field(default=0.0, alias="for", ge=0, le=WEEK,
                           description="on-delay: `when` must hold this long")
    clear: Condition | None = None
    deadband: float | None = Field(default=None, ge=0, le=1e12,
                                   description="clear only this far back past the threshold")
    off_delay: Duration = Field(default=0.0, ge=0, le=WEEK,
                                description="the clear must hold this long")
    severity: int = Field(default=3, ge=1, le=4, description="1 (highest) .. 4")
    message: str = Field(default="", max_length=500,
                         description="{field} is replaced by the reading's value")
    count: CountSpec | None = None
    window: WindowSpec | None = None
    stale: StaleSpec | None = None
    active: list[str] | None = Field(default=None, max_length=24,
                                     description='time-of-day spans, "01:00-05:00"')
    timezone: str | None = Field(default=None, max_length=64,
                                 description="for `active`; default: the system's zone")
    lists: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], ListSpec] = Field(
        default_factory=dict, max_length=16)
    realarm: Duration | None = Field(default=None, ge=1, le=WEEK,
                                     description="annunciate again when active and unacked "
                                     "this long")
    latched: bool = Field(default=False, description="stays active until `reset`")
    optional: bool = Field(default=False, description="applies where devices send its "
                           "fields; no error when no configured device declares them "
                           "(rule packs cover device kinds a compound may not have)")
    chatter: ChatterSpec = Field(default_factory=ChatterSpec)
    suppress: Condition | None = Field(default=None, description="while true the alarm is "
                                       "suppressed (maintenance mode, uplink lost)")
    actions: list[RuleAction] = Field(default_factory=list, max_length=8)

    @field_validator("active", mode="before")
    @classmethod
    def _spans(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            for span in value:
                match = _SPAN.match(span) if isinstance(span, str) else None
                if match is None or int(match[1]) > 24 or int(match[3]) > 24 \
                        or int(match[2]) > 59 or int(match[4]) > 59:
                    raise ValueError(f'expected time-of-day spans like "01:00-05:00", '
                                     f"got {span!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    @field_validator("message")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"bad template: {exc}") from None
        for _text, name, spec, conversion in parts:
            if name is None:
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or conversion \
                    or (spec and "{" in spec):
                raise ValueError(f"{{{name}}}: only plain names like {{voltage_l1}} or "
                                 "{voltage_l1:.1f}")
            _format_spec(name, spec or "")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RuleConfig:
        if self.when is None and self.stale is None:
            raise ValueError("a rule needs `when` (a condition) or `stale`")
        if self.stale is not None and self.when is not None:
            raise ValueError("a stale rule has no `when`: it raises on silence")
        if self.clear is not None and self.deadband is not None:
            raise ValueError("give `clear` or `deadband`, not both")
        if self.deadband is not None:
            threshold = compile_expression(self.when or "").threshold
            if threshold is None:
                raise ValueError("deadband needs `when` of the form FIELD > NUMBER (or >=, <, "
                                 "<=); give `clear` for other conditions")
        if self.count is not None and self.window is not None:
            raise ValueError("give `count` or `window`, not both")
        if self.count is not None and (self.clear is not None or self.deadband is not None):
            raise ValueError("a count rule clears when fewer than n remain in the window; "
                             "`clear`/`deadband` do not apply")
        if (self.count is not None or self.stale is not None) and (
                self.for_ or self.off_delay):
            raise ValueError("`for`/`off_delay` do not apply to count and stale rules (their "
                             "window or silence is the delay)")
        if self.stale is not None and (self.clear is not None or self.deadband is not None):
            raise ValueError("a stale rule clears with the next reading; `clear`/`deadband` "
                             "do not apply")
        if self.timezone is not None and self.active is None:
            raise ValueError("timezone applies to `active`; give `active` too")
        return self

    @property
    def on_delay(self) -> float:
        return self.for_


def _format_spec(name: str, spec: str) -> None:
    """Refuse a spec that is not Python's format spec, and a width or precision above
    MESSAGE_WIDTH_MAX (each placeholder's text is at most that wide, up to what the value
    itself needs)."""
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"{{{name}:{spec}}}: not a format spec (like .1f, >8, 05d)")
    for part in ("width", "precision"):
        digits = match[part]
        if digits and int(digits) > MESSAGE_WIDTH_MAX:
            raise ValueError(f"{{{name}:{spec}}}: {part} {int(digits)} is more than "
                             f"{MESSAGE_WIDTH_MAX}")


class AlarmsSection(StrictModel):
    """Engine settings (every field has a default; the section may be left out)."""

    checkpoint_interval: Duration = Field(
        default=10.0, ge=0.5, le=3600,
        description="window and count state is saved this often (timers at once)")
    max_alarms: int = Field(default=100_000, ge=10, le=10_000_000,
                            description="(rule, device) pairs tracked at most")
    flood_count: int = Field(default=10, ge=1, le=100_000,
                             description="raises within flood_window that count as a flood")
    flood_window: Duration = Field(default=600.0, ge=1, le=86400)
    journal_keep: Duration = Field(
        default=90 * 86400.0, ge=3600, le=3650 * 86400.0,
        description="journal entries older than this are deleted (the alarm series in the "
        "store keeps the history); the saved alarm states are never pruned")


RulesFiles = list[Annotated[str, Field(min_length=1, max_length=4096)]]
