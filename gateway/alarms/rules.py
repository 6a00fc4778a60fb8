"""A rule as the engine runs it: compiled conditions, selectors, schedule and lists.

Built once per config load from a :class:`~gateway.alarms.config.RuleConfig`; the
``digest`` of the config decides, on reload, whether the running alarms of the rule keep
their timers (unchanged) or start afresh (changed).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.alarms.config import RuleConfig
from gateway.alarms.expr import Expression, FieldKind, compile_expression

BUILTIN_NAMES: dict[str, FieldKind] = {
    "device": "string",
    "measurement": "string",
    "device_state": "string",
    "uplink_lost": "bool",
}
"""Names every condition may use besides the reading's fields and tags."""

WINDOW_NAMES: dict[str, FieldKind] = {
    "min": "number", "max": "number", "avg": "number", "sum": "number",
    "delta": "number", "rate": "number", "count": "number", "full": "bool",
}
"""Names a rule with ``window:`` may use: aggregates of the window's field."""

MAX_LIST_ENTRIES = 1_000_000
MAX_LIST_BYTES = 64 * 1024 * 1024
"""A list file larger than this is refused before it is read: the entry limit alone let
one endless line (``/dev/zero``, a mistyped path to a disk image) fill the memory."""


def glob_matcher(patterns: list[str] | None) -> Callable[[str], bool] | None:
    """None when every value matches; exact names are a set lookup, globs one regex."""
    if not patterns:
        return None
    exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
    globs = [p for p in patterns if p not in exact]
    if not globs:
        return exact.__contains__
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in globs))
    return lambda value: value in exact or regex.match(value) is not None


@dataclass(frozen=True)
class Schedule:
    """Time-of-day spans (``01:00-05:00``, may wrap midnight) in one time zone."""

    spans: tuple[tuple[int, int], ...]
    """(start, end) in minutes of the day; end <= start wraps past midnight."""
    zone: ZoneInfo | None

    @classmethod
    def parse(cls, spans: list[str], zone: str | None) -> Schedule:
        out = []
        for span in spans:
            start, end = span.split("-")
            h1, m1 = (int(x) for x in start.strip().split(":"))
            h2, m2 = (int(x) for x in end.strip().split(":"))
            out.append((h1 * 60 + m1, h2 * 60 + m2))
        return cls(tuple(out), ZoneInfo(zone) if zone else None)

    def minute_of_day(self, at: float) -> float:
        local = datetime.fromtimestamp(at, self.zone) if self.zone else \
            datetime.fromtimestamp(at).astimezone()
        return local.hour * 60 + local.minute + local.second / 60

    def active(self, at: float) -> bool:
        minute = self.minute_of_day(at)
        for start, end in self.spans:
            if start < end and start <= minute < end:
                return True
            if end <= start and (minute >= start or minute < end):
                return True
        return False

    def next_change(self, at: float) -> float:
        """When :meth:`active` next flips (at most a day ahead; minute resolution, so a
        clock change moves it by at most a minute)."""
        state = self.active(at)
        minute = self.minute_of_day(at)
        step = 60 - (minute * 60) % 60
        probe = at + step
        for _ in range(24 * 60 + 1):
            if self.active(probe) != state:
                return probe
            probe += 60
        return at + 86400


def read_list(path: Path) -> list[str]:
    """One value per line; blank lines and ``#`` comments skipped."""
    values: list[str] = []
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block, a device never end
        raise ValueError(f"{path}: not a regular file")
    with path.open("rb") as raw:
        data = raw.read(MAX_LIST_BYTES + 1)
    if len(data) > MAX_LIST_BYTES:
        raise ValueError(f"{path}: larger than {MAX_LIST_BYTES // (1024 * 1024)} MiB")
    with io.StringIO(data.decode("utf-8")) as f:
        for line in f:
            value = line.split("#", 1)[0].strip()
            if value:
                values.append(value)
                if len(values) > MAX_LIST_ENTRIES:
                    raise ValueError(f"{path}: more than {MAX_LIST_ENTRIES} entries")
    return values


@dataclass
class RuleLists:
    """A rule's lists, raw and (where a device pseudonymises the matched field) hashed.

    The raw set is kept only when some device matched by the rule does not pseudonymise
    the field: where every device hashes it, raw values are dropped after hashing."""

    raw: dict[str, frozenset[str]] = field(default_factory=dict)
    hashed: dict[str, frozenset[str]] = field(default_factory=dict)
    private_field: dict[str, str] = field(default_factory=dict)
    """list name -> the field it is matched against, for lists that are hashed somewhere."""

    def for_device(self, private: frozenset[str]) -> dict[str, frozenset[str]]:
        out = {}
        for name, values in self.raw.items():
            out[name] = values
        for name, values in self.hashed.items():
            if self.private_field.get(name) in private:
                out[name] = values
        return out


def load_lists(config: RuleConfig, base: Path, private_fields: list[frozenset[str]],
               pseudonymize: Callable[[object], str] | None) -> RuleLists:
    """Read the rule's list files; ``private_fields`` holds, for each device the rule
    matches, the fields it pseudonymises. Raises OSError/ValueError for a bad file."""
    lists = RuleLists()
    for name, spec in config.lists.items():
        path = spec.file if spec.file.is_absolute() else base / spec.file
        try:
            values = read_list(path)
        except FileNotFoundError:
            if not config.optional:
                raise
            values = []  # a pack's list the compound has not made yet (a warning)
        hashed_somewhere = spec.field is not None and any(spec.field in p for p in private_fields)
        raw_somewhere = spec.field is None or not private_fields or \
            any(spec.field not in p for p in private_fields)
        if hashed_somewhere:
            if pseudonymize is None:
                raise ValueError(f"list {name}: {spec.field} is pseudonymised but no key is set")
            lists.hashed[name] = frozenset(pseudonymize(v) for v in values)
            lists.private_field[name] = spec.field or ""
        if raw_somewhere:
            lists.raw[name] = frozenset(values)
    return lists


@dataclass
class CompiledRule:
    config: RuleConfig
    digest: str
    when: Expression | None
    clear: Expression | None
    suppress: Expression | None
    device_match: Callable[[str], bool] | None
    measurement_match: Callable[[str], bool] | None
    tag_match: tuple[tuple[str, Callable[[str], bool]], ...]
    trigger: frozenset[str]
    """Fields of which a reading must carry at least one to be evaluated (empty: any)."""
    schedule: Schedule | None
    lists: RuleLists = field(default_factory=RuleLists)
    uses_state_only: bool = False
    """The condition reads only engine names (device_state ...): evaluated on device
    state changes too."""

    @property
    def id(self) -> str:
        return self.config.id

    def selects_device(self, device_id: str) -> bool:
        return self.device_match is None or self.device_match(device_id)

    def selects(self, measurement: str, tags: Mapping[str, str]) -> bool:
        if self.measurement_match is not None and not self.measurement_match(measurement):
            return False
        for key, match in self.tag_match:
            value = tags.get(key)
            if value is None or not match(value):
                return False
        return True


def rule_digest(config: RuleConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


def compile_rule(config: RuleConfig) -> CompiledRule:
    """Compile one validated rule (its expressions are known to compile)."""
    when = compile_expression(config.when) if config.when is not None else None
    clear = compile_expression(config.clear) if config.clear is not None else None
    if config.deadband is not None and when is not None and when.threshold is not None:
        t = when.threshold
        if t.op in ("gt", "ge"):
            clear = compile_expression(f"{t.field} < {t.value - config.deadband!r}")
        else:
            clear = compile_expression(f"{t.field} > {t.value + config.deadband!r}")
    suppress = compile_expression(config.suppress) if config.suppress else None
    engine_names = set(BUILTIN_NAMES) | set(config.lists)
    if config.window is not None:
        engine_names |= set(WINDOW_NAMES)
    names: set[str] = set()
    for expression in (when, clear):
        if expression is not None:
            names |= expression.names
    if config.window is not None:
        trigger = frozenset({config.window.field})
    elif config.stale is not None:
        trigger = frozenset({config.stale.field} if config.stale.field else ())
    else:
        trigger = frozenset(names - engine_names - set(config.tags))
    uses_state_only = bool(names) and names <= set(BUILTIN_NAMES) and config.window is None
    tag_match = tuple((key, m) for key, pattern in sorted(config.tags.items())
                      if (m := glob_matcher([pattern])) is not None)
    return CompiledRule(
        config=config, digest=rule_digest(config), when=when, clear=clear, suppress=suppress,
        device_match=glob_matcher(config.devices),
        measurement_match=glob_matcher(config.measurement),
        tag_match=tag_match, trigger=trigger if not uses_state_only else frozenset(),
        schedule=Schedule.parse(config.active, config.timezone) if config.active else None,
        uses_state_only=uses_state_only)


def kinds_for(rule: RuleConfig, fields: Mapping[str, FieldKind] | None,
              tags: Mapping[str, str]) -> dict[str, FieldKind] | None:
    """The names a condition of ``rule`` may use on a device emitting ``fields`` (None:
    not knowable, so names are not checked)."""
    if fields is None:
        return None
    kinds: dict[str, FieldKind] = {name: "string" for name in tags}
    kinds.update(fields)
    kinds.update(BUILTIN_NAMES)
    kinds.update({name: "list" for name in rule.lists})
    if rule.window is not None:
        kinds.update(WINDOW_NAMES)
    return kinds


def describe(rule: CompiledRule) -> dict[str, Any]:
    """A short summary for ``iotgw rules check``."""
    c = rule.config
    kind = ("stale" if c.stale else "count" if c.count else "window" if c.window
            else "threshold")
    return {"id": c.id, "kind": kind, "severity": c.severity, "for": c.for_,
            "trigger": sorted(rule.trigger)}
