"""Driver registry: the core knows drivers only through this table.

A driver package under ``drivers/`` calls :func:`register_driver` when imported;
:func:`load_drivers` imports every such package. The config loader builds the ``devices``
union from the registered config models, the runtime instantiates the registered class.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

if TYPE_CHECKING:
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
    return DRIVER_TYPES
