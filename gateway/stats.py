"""Counters the gateway keeps about itself; the ops bus and metrics endpoint read them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SinkStats:
    state: str = "starting"
    """ok | retrying | failed (auth/permission/not found: retried slowly)."""
    sent_lines: int = 0
    sent_batches: int = 0
    rejected_lines: int = 0
    errors: int = 0
    last_error: str | None = None


@dataclass
class GatewayStats:
    readings_in: int = 0
    readings_committed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    """Readings (or parts of them) refused, by reason: invalid_value, no_fields, buffer_full..."""
    sinks: dict[str, SinkStats] = field(default_factory=dict)
    connections: dict[str, Counter[str]] = field(default_factory=dict)
    """Counters of shared connections (the HTTP receiver, a camera host's stream) for
    problems that belong to no one device: an unknown device id, a slow client."""

    def sink(self, name: str) -> SinkStats:
        return self.sinks.setdefault(name, SinkStats())
