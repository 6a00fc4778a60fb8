"""Driver registry: the core knows drivers only through this table.

A driver package under ``drivers/`` calls :func:`register_driver` when imported;
:func:`load_drivers` imports every such package. The config loader builds the ``devices``
union from the registered config models, the runtime instantiates the registered class.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

if TYPE_CHECKING:
    import argparse

    from gateway.driver import DeviceConfigBase, Driver

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


def load_drivers() -> dict[str, DriverType]:
    """Import every package below ``drivers`` so each registers itself."""
    import drivers

    for module in pkgutil.iter_modules(drivers.__path__):
        if module.ispkg:
            importlib.import_module(f"drivers.{module.name}")
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
