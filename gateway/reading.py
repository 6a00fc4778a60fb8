"""The unit of data that flows from drivers through the buffer to the sinks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

FieldValue: TypeAlias = float | int | bool | str


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement at one instant.

    Immutable so a reading handed to several consumers (buffer, ops bus) cannot be changed
    by one of them under the feet of another. ``time_ns`` is nanoseconds since the epoch.
    """

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int
