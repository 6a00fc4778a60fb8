"""Wires the alarm outputs that are not the ops bus to the running engine: the counters
behind ``/status`` and ``/metrics`` (gateway/alarms/stats.py) and rule actions
(gateway/alarms/actions.py), as the supervised service ``alarm-actions``.

The engine may start after the services (``Gateway.alarms`` is None until a config has
rules; a reload can add the first ones): ``Gateway.add_alarms_listener`` hands it over
when it starts, before its first transition. The ops bus attaches itself the same way
(gateway/mqtt/ops.py). The action runner is a task that waits on its queue; in a gateway
without rules it stays idle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.alarms import stats
from gateway.alarms.actions import ActionRunner, ActionSpec
from gateway.alarms.audit import audit_for
from gateway.alarms.model import AlarmService
from gateway.registry import register_service


def actions_of(gateway: Any) -> Callable[[str], Sequence[ActionSpec]]:
    """A rule's actions as the running engine has them (``rule_config``), else from the
    gateway's config."""

    def lookup(rule_id: str) -> Sequence[ActionSpec]:
        service = getattr(gateway, "alarms", None)
        config_of = getattr(service, "rule_config", None)
        if config_of is not None:
            rule = config_of(rule_id)
        else:
            rule = next((r for r in getattr(gateway.config.model, "rules", None) or []
                         if r.id == rule_id), None)
        return list(getattr(rule, "actions", None) or ())

    return lookup


class AlarmOutputs:
    """The counters and the action runner, on whichever engine the gateway runs."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.runner = ActionRunner(gateway, actions_of(gateway), audit_for(gateway))

    def attach(self, service: AlarmService) -> None:
        stats.attach(self.gateway)
        service.add_transition_listener(self.runner.on_transition)


def alarm_outputs_factory(gateway: Any) -> Callable[[], Awaitable[None]] | None:
    outputs = AlarmOutputs(gateway)
    gateway.add_alarms_listener(outputs.attach)  # now, or when a reload starts an engine
    return outputs.runner.run


register_service("alarm-actions", alarm_outputs_factory)
