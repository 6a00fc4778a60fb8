"""Capped exponential backoff with full jitter.

Jitter keeps a fleet of gateways (or many devices on one box) from retrying a recovered
server in lockstep.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float = 0.5, cap: float = 60.0, factor: float = 2.0) -> None:
        self.base = base
        self.cap = cap
        self.factor = factor
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * self.factor ** self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
