"""Checks of rules against the rest of the config (the devices they select).

Errors (reported like every config error, exit 2): duplicate rule ids; a field name a
device cannot emit, or a type mismatch, where the device's driver declares its fields
(:meth:`DeviceConfigBase.emitted_fields`); ``stale: 3x`` on a device without an interval;
a window over a non-numeric field; an unreadable list file.

Warnings (logged at start and printed by ``iotgw rules check``, not errors): a rule whose
device selector matches no configured device. A shipped rule pack names device kinds
(``gate-*``) that a given compound may not have, and readings may arrive from devices
the config does not list, so refusing to start would be wrong.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from gateway.alarms.config import RuleConfig
from gateway.alarms.expr import ExpressionError, compile_expression
from gateway.alarms.rules import BUILTIN_NAMES, glob_matcher, kinds_for, read_list
from gateway.config.yamlsource import Path_

Finding = tuple[Path_, str]


CONFIG_DIR: ContextVar[Path | None] = ContextVar("iotgw_config_dir", default=None)
"""Set by the loader while it checks: list files are relative to the config's folder."""


def selected_devices(rule: RuleConfig, devices: list[Any]) -> list[Any]:
    """The configured devices a rule can match. A tag the device's installer tags do not
    set may still come with its readings, so only a contradicting tag excludes."""
    match = glob_matcher(rule.devices)
    chosen = []
    for device in devices:
        if match is not None and not match(device.id):
            continue
        if any(key in device.tags and not fnmatch.fnmatchcase(device.tags[key], pattern)
               for key, pattern in rule.tags.items()):
            continue
        chosen.append(device)
    return chosen


def check_rules(config: Any) -> Iterator[Finding]:
    rules: list[RuleConfig] = list(getattr(config, "rules", []) or [])
    if not rules:
        return
    first: dict[str, int] = {}
    devices = [d for d in config.devices if d.enabled]
    base = CONFIG_DIR.get()
    for index, rule in enumerate(rules):
        if rule.id in first:
            yield (("rules", index, "id"),
                   f"duplicate rule id {rule.id!r} (first at rules[{first[rule.id]}])")
        else:
            first[rule.id] = index
        chosen = selected_devices(rule, devices)
        if not (rule.devices or rule.tags):
            findings: list[Finding] = []
            chosen = list(_by_fields(index, rule, chosen, findings))
            yield from findings
        yield from _check_devices(index, rule, chosen)
        for name, spec in rule.lists.items():
            path = spec.file if spec.file.is_absolute() else (
                None if base is None else base / spec.file)
            if path is not None:
                try:
                    read_list(path)
                except FileNotFoundError as exc:
                    if not rule.optional:  # optional: a warning (rule_warnings)
                        yield (("rules", index, "lists", name, "file"), f"cannot read: {exc}")
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    yield (("rules", index, "lists", name, "file"), f"cannot read: {exc}")
            if spec.field is not None and config.privacy is None and any(
                    spec.field in d.pseudonymize for d in selected_devices(rule, devices)):
                yield (("rules", index, "lists", name), "needs privacy.key_file")


def _by_fields(index: int, rule: RuleConfig, devices: list[Any],
               findings: list[Finding]) -> Iterator[Any]:
    """A rule without device selectors applies to every device whose readings carry its
    fields: check it on those; if every device declares its fields and none has one the
    rule reads, that is an unknown name."""
    if rule.when is None:
        return
    names = set(compile_expression(rule.when).names) - set(BUILTIN_NAMES) - set(rule.lists)
    if rule.window is not None:
        names = {rule.window.field}
    if not names:
        return
    unknowable = False
    for device in devices:
        fields = device.emitted_fields()
        if fields is None:
            unknowable = True
        elif names & set(fields):
            yield device
        elif names <= set(device.tags):
            yield device
    if devices and not unknowable and not rule.optional and not any(
            names & set(d.emitted_fields() or ()) or names <= set(d.tags) for d in devices):
        findings.append((("rules", index, "when"),
                         f"no configured device emits {', '.join(sorted(names))}"))


def _check_devices(index: int, rule: RuleConfig, devices: list[Any]) -> Iterator[Finding]:
    checked: set[tuple[tuple[str, str], ...]] = set()
    for device in devices:
        if rule.stale is not None and rule.stale.factor is not None \
                and device.poll_interval() is None:
            yield (("rules", index, "stale"),
                   f"device {device.id!r} has no polling interval; give stale a duration")
        fields = device.emitted_fields()
        kinds = kinds_for(rule, fields, device.tags)
        if kinds is None:
            continue
        signature = tuple(sorted(kinds.items()))
        if signature in checked:
            continue
        checked.add(signature)
        for key in ("when", "clear", "suppress"):
            text = getattr(rule, key)
            if text is None:
                continue
            try:
                compile_expression(text, kinds)
            except ExpressionError as exc:
                yield (("rules", index, key), f"{exc} (device {device.id!r})")
                return
        if rule.window is not None and kinds.get(rule.window.field) != "number":
            yield (("rules", index, "window", "field"),
                   f"device {device.id!r} has no numeric field {rule.window.field!r}")
            return
        if rule.stale is not None and rule.stale.field is not None \
                and rule.stale.field not in kinds:
            yield (("rules", index, "stale", "field"),
                   f"device {device.id!r} has no field {rule.stale.field!r}")
            return


def rule_warnings(config: Any, base: Path | None = None) -> list[str]:
    """Findings that do not stop the gateway (see the module docstring). ``base``: the
    config's folder, for the list files of optional rules (a shipped pack's blocklist the
    compound may not have made: an empty list until a reload finds it)."""
    out = []
    devices = [d for d in config.devices if d.enabled]
    for index, rule in enumerate(getattr(config, "rules", []) or []):
        if rule.enabled and (rule.devices or rule.tags) and not selected_devices(rule, devices):
            out.append(f"rules[{index}] ({rule.id}): its selectors match no configured device")
        for name, spec in rule.lists.items() if rule.enabled and rule.optional else ():
            path = spec.file if spec.file.is_absolute() or base is None else base / spec.file
            if not path.exists():
                out.append(f"rules[{index}] ({rule.id}): list {name} file {spec.file} is "
                           "missing: an empty list until a reload finds it")
    return out
