"""Wires the alarm outputs that are not the ops bus to the running engine: the counters
behind ``/status`` and ``/metrics`` (gateway/alarms/stats.py) and rule actions
(gateway/alarms/actions.py), as the supervised service ``alarm-actions``.

Nothing here runs without an engine (``Gateway.alarms`` is None when no rules are
configured). The ops bus attaches itself (gateway/mqtt/ops.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.alarms import stats
from gateway.alarms.actions import ActionRunner, ActionSpec
from gateway.alarms.audit import audit_for
from gateway.registry import register_service


def configured_rules(config: Any) -> list[Any]:
    """Every enabled rule of a loaded config (inline, included files and packs are merged
    into ``rules`` by the loader); [] without rules."""
    return [r for r in getattr(config.model, "rules", None) or [] if r.enabled]


class _ActionsOfConfig:
    """``rule id -> actions`` of the gateway's current config, rebuilt after a reload (the
    config object changes) instead of per transition."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self._config: Any = None
        self._actions: dict[str, Sequence[ActionSpec]] = {}

    def __call__(self) -> Mapping[str, Sequence[ActionSpec]]:
        config = self.gateway.config
        if config is not self._config:
            self._config = config
            self._actions = {rule.id: rule.actions for rule in configured_rules(config)
                             if getattr(rule, "actions", None)}
        return self._actions


def alarm_outputs_factory(gateway: Any) -> Callable[[], Awaitable[None]] | None:
    service = getattr(gateway, "alarms", None)
    if service is None:
        return None
    stats.attach(gateway)
    runner = ActionRunner(gateway, _ActionsOfConfig(gateway), audit_for(gateway))
    service.add_transition_listener(runner.on_transition)
    return runner.run


register_service("alarm-actions", alarm_outputs_factory)
