"""The one API a plugin has on the core: a typed handle on the running gateway.

A driver reaches the core through its :class:`~gateway.driver.DeviceContext`; a driver
whose devices share one connection (the MQTT broker link today, an HTTP receiver next)
also needs what no single device owns: the gateway-wide config section that describes the
connection, a supervised place for the connection's own tasks, the commit path that
confirms readings are on disk before a source is acknowledged, and the dead-letter path
for input that was refused. That is :class:`GatewayHandle`, reached as
``DeviceContext.gateway``; nothing else of the core is visible to a plugin.

The shared-connection pattern on this API::

    async with ctx.resources.use(("mqtt", "devices"), lambda: Broker.create(ctx.gateway)):
        ...  # attach this device; detach on the way out

The first device creates the connection (its tasks started through ``gateway.tasks``, so
they are supervised, logged once and shown in readiness); the last one to leave closes
it. Readings go in with ``gateway.submit``; ``gateway.wait_committed`` returns once
everything submitted so far is committed, which is when a source may be acknowledged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import BaseModel

from gateway.reading import Reading
from gateway.shared import SharedResources
from gateway.supervisor import TaskStarter

SectionT = TypeVar("SectionT", bound=BaseModel)


@dataclass(frozen=True)
class DeadLetter:
    """Input a plugin refused: published on the ops bus ``errors`` topic and counted."""

    device_id: str
    reason: str
    payload: bytes | bytearray  # as the transport delivered it (paho: a bytearray)
    source: str
    """Where it came from: an MQTT topic, an HTTP path, a serial port."""


class GatewayHandle(Protocol):
    @property
    def gateway_id(self) -> str: ...

    @property
    def data_dir(self) -> Path:
        """The gateway's resolved data directory: where a plugin keeps small durable state
        of its own (a backfill position), beside the buffer."""
        ...

    @property
    def resources(self) -> SharedResources:
        """Objects shared by devices (one port, one connection), reference counted."""
        ...

    @property
    def tasks(self) -> TaskStarter:
        """Start and stop named background tasks under the gateway's supervisor."""
        ...

    def section(self, name: str, model: type[SectionT]) -> SectionT | None:
        """The validated gateway-wide config section ``name`` (e.g. ``mqtt``), read at
        call time so a reloaded config is seen; None when the config has none."""
        ...

    async def submit(self, device_id: str, readings: Sequence[Reading]) -> None:
        """Queue readings for the next commit (waits while the buffer writer is behind)."""
        ...

    async def wait_committed(self) -> None:
        """Return once everything submitted so far is committed to the buffer."""
        ...

    async def wait_stored(self) -> bool:
        """As ``wait_committed``; False when that commit dropped some of the new readings
        at once (the buffer is full or short of disk space): do not tell a sender that
        retries ("answer after commit") that its event is safe."""
        ...

    def dead_letter(self, letter: DeadLetter) -> None: ...

    def counters(self, connection: str) -> Counter[str]:
        """The counters of a shared connection, by kind, for what belongs to no one
        device (a post for an unknown device, a slow client, a stream the host closed):
        shown in ``/status`` and as ``iotgw_connection_events``. The same Counter for
        the same name, so a connection rebuilt after a failure keeps counting."""
        ...
