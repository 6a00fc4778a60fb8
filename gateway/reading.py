"""The unit of data that flows from drivers through the buffer to the sinks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, TypeAlias

FieldValue: TypeAlias = float | int | bool | str


class Reading(NamedTuple):
    """One measurement at one instant.

    Immutable so a reading handed to several consumers (buffer, ops bus) cannot be
    reassigned by one of them under the feet of another. A NamedTuple rather than a
    frozen dataclass: every reading is built twice (by its driver, then tagged by the
    pipeline), and a tuple builds in half the time, which shows at 50,000 readings/s.
    ``time_ns`` is nanoseconds since the epoch.
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int
