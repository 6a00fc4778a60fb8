"""The vendors the event_stream driver speaks, as one table.

A profile says where the stream is, how its parts are parsed, whether the device sends
heartbeats (then silence is three of them), whether an ``active`` event repeats until it
stops (Hikvision: about once a second, with no ``inactive`` at the end) and whether the
device keeps a searchable event log to backfill from after an outage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.event_stream.events import PARSERS, StreamEvent
from drivers.event_stream.multipart import Part

if TYPE_CHECKING:
    from drivers.event_stream.config import EventStreamConfig


@dataclass(frozen=True)
class Profile:
    name: str
    path: Callable[[EventStreamConfig], str]
    parse: Callable[[Part], list[StreamEvent]]
    heartbeat: bool
    """The device sends heartbeat parts at the interval we ask for."""
    repeats_active: bool
    """Active events repeat while active and need de-duplication and a clear timeout."""
    backfill_path: str | None
    """Where the device's event log is searched (None: it has none we use)."""


def _dahua_path(config: EventStreamConfig) -> str:
    # codes=[All]: long code lists are truncated by some firmware; we filter ourselves.
    return f"/cgi-bin/eventManager.cgi?action=attach&codes=[All]&heartbeat={config.heartbeat}"


def _hikvision_path(config: EventStreamConfig) -> str:
    return "/ISAPI/Event/notification/alertStream"


PROFILES: dict[str, Profile] = {
    "dahua": Profile("dahua", _dahua_path, PARSERS["dahua"], heartbeat=True,
                     repeats_active=False, backfill_path=None),
    "hikvision": Profile("hikvision", _hikvision_path, PARSERS["hikvision"], heartbeat=False,
                         repeats_active=True,
                         backfill_path="/ISAPI/AccessControl/AcsEvent?format=json"),
}
