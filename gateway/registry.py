"""Driver registry: the core knows drivers only through this table.

Drivers are found through the ``iotgw.drivers`` entry points (pyproject.toml; a
third-party package declares its own) and imported only when a config names them: each
entry point names a module whose import calls :func:`register_driver`. The config loader
builds the ``devices`` union from the registered config models, the runtime instantiates
the registered class. The core never imports ``drivers.*`` itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, get_args

if TYPE_CHECKING:
    import argparse

    from gateway.driver import DeviceConfigBase, Driver

DRIVER_GROUP = "iotgw.drivers"
SINK_GROUP = "iotgw.sinks"
COMMAND_GROUP = "iotgw.commands"
"""Top-level ``iotgw`` commands from packages beside the core (``iotgw demo`` from demo/):
each entry point names a function that takes the subparsers and adds its command."""


def plugin_entry_points(group: str) -> dict[str, EntryPoint]:
    """The installed plugins of ``group`` by name, without importing any of them."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load_plugins(group: str, names: Iterable[str] | None, registered: dict[str, Any]) -> None:
    """Import the named plugins of ``group`` not yet in ``registered`` (all when None);
    unknown names are left for the config's own error, which lists the known ones."""
    available = plugin_entry_points(group)
    wanted = available if names is None else {n: available[n] for n in names
                                               if n in available and n not in registered}
    for ep in wanted.values():
        if ep.name not in registered:
            importlib.import_module(ep.value.partition(":")[0])


@dataclass(frozen=True)
class DriverType:
    name: str
    config_model: type[DeviceConfigBase]
    driver_class: type[Driver]


DRIVER_TYPES: dict[str, DriverType] = {}


def register_driver(config_model: type[DeviceConfigBase], driver_class: type[Driver]) -> None:
    """Register a driver under the value of its config model's ``driver`` literal."""
    annotation = config_model.model_fields["driver"].annotation
    (name,) = get_args(annotation)
    DRIVER_TYPES[name] = DriverType(name, config_model, driver_class)


def load_drivers(names: Iterable[str] | None = None) -> dict[str, DriverType]:
    """Import the named drivers (every installed one when None) so each registers itself."""
    load_plugins(DRIVER_GROUP, names, DRIVER_TYPES)
    # A test or tool may import one driver first; the config union must not depend on it.
    ordered = dict(sorted(DRIVER_TYPES.items()))
    DRIVER_TYPES.clear()
    DRIVER_TYPES.update(ordered)
    return DRIVER_TYPES


@dataclass(frozen=True)
class Service:
    """A gateway-wide background component (the MQTT ops bus, the metrics endpoint).

    ``factory(gateway)`` returns the coroutine function to supervise, or None when the
    config does not ask for the service.
    """

    name: str
    factory: Callable[[Any], Callable[[], Awaitable[None]] | None]


SERVICES: list[Service] = []
CLI_EXTENSIONS: list[Callable[[argparse._SubParsersAction], None]] = []


def register_service(name: str, factory: Callable[[Any], Callable[[], Awaitable[None]] | None]
                     ) -> None:
    SERVICES.append(Service(name, factory))


def register_cli(add_commands: Callable[[argparse._SubParsersAction], None]) -> None:
    """A driver adds its commissioning commands (``iotgw modbus scan`` ...) to the CLI."""
    CLI_EXTENSIONS.append(add_commands)


CROSS_CHECKS: list[Callable[[Any], Any]] = []


def register_cross_check(rule: Callable[[Any], Any]) -> None:
    """A rule over the whole validated config (e.g. intervals a bus cannot serve).

    ``rule(config)`` yields ``(yaml_path_tuple, message)`` findings, reported with the
    line of that path like every other config error."""
    CROSS_CHECKS.append(rule)
