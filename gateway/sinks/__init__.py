"""Sink registry: the one place that knows which sink types exist.

Each entry maps the config ``type`` to its pydantic model and a factory. The config
loader builds the discriminated ``sinks`` union from this table; the runtime builds sinks
from it. Adding a sink type means adding a module and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.sinks.base import Sink, SinkConfigBase


@dataclass(frozen=True)
class SinkType:
    config_model: type[SinkConfigBase]
    factory: Callable[[SinkConfigBase, Path], Sink]
    """Builds the sink from its validated config and the gateway's data_dir."""


SINK_TYPES: dict[str, SinkType] = {}


def register_sink(type_name: str, config_model: type[SinkConfigBase], factory: Callable) -> None:
    SINK_TYPES[type_name] = SinkType(config_model, factory)


def load_sink_types() -> dict[str, SinkType]:
    """Import the built-in sink modules (each registers itself) and return the table."""
    from gateway.sinks import file, influxdb, influxdb1  # noqa: F401

    # Import order depends on who imported a sink module first; the config union (and
    # so the committed JSON Schema and error messages) must not.
    ordered = dict(sorted(SINK_TYPES.items()))
    SINK_TYPES.clear()
    SINK_TYPES.update(ordered)
    return SINK_TYPES
