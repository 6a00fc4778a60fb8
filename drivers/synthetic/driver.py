"""Synthetic readings on an exact time grid.

Reading ``k`` of a device is stamped ``k * interval`` (nanoseconds since the epoch) and
its values are a pure function of ``k``. That makes end-to-end checks exact: from a
timestamp found in the store a test knows the values that must be there, and a gap in
the timestamps is a lost reading. When the task falls behind (a busy machine), it emits
every grid point it missed, so within one run the series has no holes.
"""

from __future__ import annotations

import asyncio
import time
from functools import lru_cache

from drivers.synthetic.config import SyntheticConfig
from gateway.driver import DeviceState, Driver
from gateway.reading import Reading

BURST_SLICE = 1000
"""Readings built and emitted per step of a catch-up burst, so the loop keeps turning."""

MAX_BURST = 50_000
"""Most readings emitted in one wake-up; beyond that (e.g. the clock jumped forward by a
day) the driver skips ahead rather than flooding the buffer with invented history."""


_KEYS = tuple(f"f{i}" for i in range(200))
PERIOD = 10_000
"""The float fields repeat with this period in ``k``; ``seq`` does not."""


@lru_cache(maxsize=PERIOD)
def _floats(residue: int, count: int) -> dict[str, float]:
    # Cached: the driver is also the load generator of the throughput benchmark, and
    # rebuilding these dicts was a quarter of its CPU.
    return {key: ((residue * 7 + i * 13) % PERIOD) / 4 for i, key in enumerate(_KEYS[:count])}


def field_values(k: int, count: int, text: bool = False) -> dict[str, float | int | str]:
    """The values of reading ``k``: tests recompute them from the timestamp."""
    values: dict[str, float | int | str] = {**_floats(k % PERIOD, count), "seq": k}
    if text:
        values["status"] = f"state-{k % 5}"
    return values


class SyntheticDriver(Driver):
    config: SyntheticConfig

    async def run(self) -> None:
        cfg = self.config
        step = max(1, round(cfg.interval * 1e9))
        next_k = time.time_ns() // step + 1
        self.ctx.set_state(DeviceState.ONLINE)
        while True:
            now_k = time.time_ns() // step
            if now_k - next_k >= MAX_BURST:
                self.ctx.count("skipped", now_k - next_k + 1 - MAX_BURST)
                next_k = now_k - MAX_BURST + 1
            while now_k >= next_k:
                last = min(now_k, next_k + BURST_SLICE - 1)
                readings = [
                    Reading(cfg.measurement, {}, field_values(k, cfg.fields, cfg.text_field),
                            k * step)
                    for k in range(next_k, last + 1)
                ]
                next_k = last + 1
                await self.ctx.emit(readings)
                if next_k <= now_k:
                    await asyncio.sleep(0)  # let forwarders and the ops bus run
            wait_ns = next_k * step - time.time_ns()
            await asyncio.sleep(max(wait_ns / 1e9, cfg.wake_interval))
