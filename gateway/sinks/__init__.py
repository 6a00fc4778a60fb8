"""Sink registry: the one place that knows which sink types exist.

Each entry maps the config ``type`` to its pydantic model and a factory. The config
loader builds the discriminated ``sinks`` union from this table; the runtime builds sinks
from it. Sink modules are found through the ``iotgw.sinks`` entry points and imported only
when a config names them (an influxdb sink costs aiohttp and influxdb-client).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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


def load_sink_types(names: Iterable[str] | None = None) -> dict[str, SinkType]:
    """Import the named sink types (every installed one when None; ``iotgw.sinks`` entry
    points) and return the table. ``file`` is always loaded: it is the default sink."""
    from gateway.registry import SINK_GROUP, load_plugins

    load_plugins(SINK_GROUP, None if names is None else {*names, "file"}, SINK_TYPES)
    # Import order depends on who imported a sink module first; the config union (and
    # so the committed JSON Schema and error messages) must not.
    ordered = dict(sorted(SINK_TYPES.items()))
    SINK_TYPES.clear()
    SINK_TYPES.update(ordered)
    return SINK_TYPES
