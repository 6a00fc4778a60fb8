"""Second validation pass: rules that span items, which per-item models cannot see."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.config.messages import listed_names
from gateway.config.yamlsource import Path_

Finding = tuple[Path_, str]


def cross_check(config: Any) -> list[Finding]:
    from gateway.alarms.actions import check_actions
    from gateway.alarms.checks import check_rules
    from gateway.registry import CROSS_CHECKS

    findings: list[Finding] = []
    for rule in (*_RULES, check_rules, check_actions, *CROSS_CHECKS):
        findings.extend(rule(config))
    return findings


def _privacy_key_present(config: Any) -> Iterator[Finding]:
    if config.privacy is not None:
        return
    for index, device in enumerate(config.devices):
        if device.pseudonymize:
            yield (("devices", index, "pseudonymize"),
                   "pseudonymisation needs a key: set privacy.key_file")


def _unique_device_ids(config: Any) -> Iterator[Finding]:
    first: dict[str, int] = {}
    for index, device in enumerate(config.devices):
        if device.id in first:
            yield (("devices", index, "id"),
                   f"duplicate device id {device.id!r} (first at devices[{first[device.id]}])")
        else:
            first[device.id] = index


def _known_buses(config: Any) -> Iterator[Finding]:
    names = sorted(config.buses)
    defined = listed_names(names) or "none"
    for index, device in enumerate(config.devices):
        bus = getattr(device, "bus", None)
        if type(device).uses_bus and bus is not None and bus not in config.buses:
            yield (("devices", index, "bus"), f"unknown bus {bus!r}; defined buses: {defined}")


def _unique_bus_addresses(config: Any) -> Iterator[Finding]:
    taken: dict[tuple[str, object], tuple[int, str]] = {}
    for index, device in enumerate(config.devices):
        where = device.bus_address()
        if where is None or not device.enabled:
            continue
        if where in taken:
            other_index, other_id = taken[where]
            yield (("devices", index),
                   f"bus {where[0]!r} address {where[1]!r} is already used by "
                   f"{other_id!r} (devices[{other_index}])")
        else:
            taken[where] = (index, device.id)


def _unique_sink_names(config: Any) -> Iterator[Finding]:
    first: dict[str, int] = {}
    for index, sink in enumerate(config.sinks):
        name = sink.sink_name
        if name in first:
            yield (("sinks", index, "name"),
                   f"duplicate sink name {name!r} (first at sinks[{first[name]}]); "
                   "give each sink of one type its own name")
        else:
            first[name] = index


_RULES = (_unique_device_ids, _known_buses, _unique_bus_addresses, _unique_sink_names,
          _privacy_key_present)
