"""What a driver is to the core: a config model, a class with ``run()``, a context.

Drivers never see the buffer, the sinks or the ops bus. They hand readings to
``DeviceContext.emit`` and report health through ``DeviceContext.set_state``; the core
adds the site/gateway/device tags, validates, buffers and publishes.
"""

from __future__ import annotations

import abc
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from gateway.config.types import StrictModel
from gateway.errors import CommandRefused
from gateway.plugin import GatewayHandle
from gateway.reading import Reading
from gateway.shared import SharedResources

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""Ids end up in MQTT topics and as tag values: no slashes, wildcards or spaces."""

FieldKind = Literal["number", "bool", "string"]
"""What a field holds, as a driver declares it (see DeviceConfigBase.emitted_fields)."""


class DeviceConfigBase(StrictModel):
    """Keys every device has. Driver models subclass it and add ``driver: Literal[...]``."""

    if TYPE_CHECKING:  # each driver model's Literal; declared here for code typed on the base
        driver: str
    id: str = Field(pattern=ID_PATTERN, max_length=64)
    enabled: bool = True
    tags: dict[str, str] = Field(default_factory=dict, description="installer tags, e.g. building")
    pseudonymize: list[str] = Field(
        default_factory=list,
        description="tags or fields replaced by a keyed hash before anything leaves the "
        "process (card numbers, plates); needs privacy.key_file")
    allow_write: list[str] = Field(
        default_factory=list,
        description="points the ops bus may write (e.g. a gate relay); all others are refused")

    uses_bus: ClassVar[bool] = False
    """True for drivers whose ``bus`` key must name an entry of ``buses``."""

    def bus_address(self) -> tuple[str, object] | None:
        """(bus name, address) this device occupies, for the duplicate-address check."""
        return None

    def emitted_fields(self) -> Mapping[str, FieldKind] | None:
        """The fields this device's readings carry and what each holds, when the config
        alone says so (a Modbus profile's registers, a meter's fixed set); None when only
        the device knows (an MQTT payload). Alarm rules are checked against it at load:
        an unknown field name or a string compared with a number is a config error.
        A driver that answers must name every field it can emit."""
        return None

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        """Whether this device needs OpenSSL (TLS, or a library that imports ``ssl``
        without a fallback), given the ``buses`` entry it is on. A gateway whose devices,
        sinks and sections all say no runs without libssl and libcrypto, ~4.5 MiB less
        (gateway/openssl_gate.py). Yes unless the driver knows better, so a driver
        written before this question keeps working."""
        return True

    def poll_interval(self) -> float | None:
        """Seconds between readings when the device is polled on a schedule (for
        ``stale: 3x`` rules); None when it reports on its own."""
        interval = getattr(self, "interval", None)
        return float(interval) if isinstance(interval, int | float) else None


class DeviceState(enum.StrEnum):
    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"
    ERROR = "error"


@dataclass
class DeviceStatus:
    """The health the ops bus publishes retained under ``devices/<id>/state``."""

    state: DeviceState = DeviceState.STARTING
    last_seen: float | None = None
    last_error: str | None = None
    condition: str | None = None
    """A driver's one-word reason beside the state, for dashboards and rules to key on
    without parsing ``last_error`` (a camera: up, auth_failed, unreachable,
    stream_silent); None for drivers that have nothing finer than the state."""
    since: float = field(default_factory=time.time)
    poll_seconds: float | None = None
    """How long the last successful poll took, waiting for the bus included."""
    counters: dict[str, int] = field(default_factory=dict)


Emit = Callable[[str, Sequence[Reading]], Awaitable[None]]


class DeviceContext:
    """A driver's handle on the core for one device.

    ``bus`` is the validated config of the bus the device names (None for drivers without
    one); ``resources`` hands out objects shared by devices, such as one serial port and
    its scheduler for every meter on an RS-485 line; ``gateway`` is the typed handle on
    the running gateway for drivers whose devices share a connection (see
    :mod:`gateway.plugin`; None in a harness that runs a driver alone).
    """

    def __init__(self, device_id: str, emit: Emit,
                 on_state: Callable[[str, DeviceStatus], None] | None = None, *,
                 bus_name: str | None = None, bus: Any = None,
                 resources: SharedResources | None = None,
                 gateway: GatewayHandle | None = None) -> None:
        self.device_id = device_id
        self.status = DeviceStatus()
        self.log = logging.getLogger(f"iotgw.device.{device_id}")
        self.bus_name = bus_name
        self.bus = bus
        self.resources = resources if resources is not None else SharedResources()
        self.gateway = gateway
        self._emit = emit
        self._on_state = on_state

    async def emit(self, readings: Sequence[Reading]) -> None:
        """Hand readings to the core; returns once they are queued for the buffer.

        Awaiting it is the backpressure: when the buffer writer falls behind, drivers wait.
        """
        if readings:
            self.status.last_seen = time.time()
            await self._emit(self.device_id, readings)

    def set_state(self, state: DeviceState, error: str | None = None, *,
                  condition: str | None = None) -> None:
        status = self.status
        if (state is status.state and error == status.last_error
                and condition == status.condition):
            return
        status.state = state
        status.condition = condition
        status.last_error = error if error is not None else (
            status.last_error if state is not DeviceState.ONLINE else None)
        status.since = time.time()
        if self._on_state is not None:
            self._on_state(self.device_id, status)

    def count(self, kind: str, n: int = 1) -> None:
        """Per-device problem counters (timeouts, bad frames...), published in stats."""
        self.status.counters[kind] = self.status.counters.get(kind, 0) + n


class Driver(abc.ABC):
    """One running device. ``run`` loops until cancelled; raising makes the supervisor
    restart it with backoff, so a driver may simply let unexpected errors escape.

    ``write`` and ``poll_now`` are what the ops bus commands call; drivers that cannot
    write or poll on demand keep the defaults, which refuse with a reason. The core checks
    ``allow_write`` before ``write`` is ever called.
    """

    def __init__(self, config: DeviceConfigBase, ctx: DeviceContext) -> None:
        self.config = config
        self.ctx = ctx

    @abc.abstractmethod
    async def run(self) -> None: ...

    async def write(self, point: str, value: Any) -> dict[str, Any]:
        """Write ``value`` to ``point``; returns details for the command result."""
        raise CommandRefused(f"driver {type(self).__name__} does not support writes")

    async def poll_now(self) -> None:
        """Read the device at once instead of at its next interval."""
        raise CommandRefused(f"driver {type(self).__name__} cannot poll on demand")
