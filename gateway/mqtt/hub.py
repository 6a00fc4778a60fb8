"""How the mqtt device driver reaches what a driver normally never sees.

A driver only gets its config and a DeviceContext; but a QoS 1 message may be
acknowledged only after its readings are *committed* (``Pipeline.submit_and_wait``), its
broker settings live in the gateway-wide ``mqtt:`` section, and rejected payloads go to
the ops bus dead-letter topic. The ops-bus service factory binds one :class:`GatewayLink`
per gateway, keyed by the gateway's SharedResources object (which every DeviceContext
carries), so several gateways in one process (tests) never see each other's link and the
core needs no MQTT-specific hook.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from gateway.config.models import MqttSection
from gateway.reading import Reading
from gateway.shared import SharedResources

DeadLetter = Callable[[str, str, bytes, str], None]
"""(device_id, reason, payload, topic)"""


class GatewayLink:
    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway
        self.dead_letter_sinks: list[DeadLetter] = []

    @property
    def settings(self) -> MqttSection | None:
        """Read at use, so a reloaded config is seen by devices started after it."""
        return self._gateway.config.model.mqtt

    @property
    def gateway_id(self) -> str:
        return self._gateway.config.model.gateway.id

    def submit(self, device_id: str, readings: Sequence[Reading]) -> Any:
        return self._gateway.pipeline.submit(device_id, readings)

    def wait_committed(self, device_id: str) -> Any:
        """Awaitable that completes once everything submitted so far is committed."""
        return self._gateway.pipeline.submit_and_wait(device_id, ())

    def dead_letter(self, device_id: str, reason: str, payload: bytes, topic: str) -> None:
        for sink in self.dead_letter_sinks:
            sink(device_id, reason, payload, topic)


_LINKS: weakref.WeakKeyDictionary[SharedResources, GatewayLink] = weakref.WeakKeyDictionary()


def bind(gateway: Any) -> GatewayLink:
    link = _LINKS.get(gateway.resources)
    if link is None:
        link = _LINKS[gateway.resources] = GatewayLink(gateway)
    return link


def link_for(resources: SharedResources) -> GatewayLink | None:
    return _LINKS.get(resources)
