"""The synthetic driver: exact grid timestamps, values recomputable, catch-up bursts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from drivers.synthetic.config import SyntheticConfig
from drivers.synthetic.driver import SyntheticDriver, field_values
from gateway.driver import DeviceContext, DeviceState
from gateway.reading import Reading


async def collect(config: SyntheticConfig, seconds: float) -> tuple[list[Reading], DeviceContext]:
    got: list[Reading] = []

    async def emit(device_id: str, readings: Sequence[Reading]) -> None:
        got.extend(readings)

    ctx = DeviceContext(config.id, emit)
    task = asyncio.create_task(SyntheticDriver(config, ctx).run())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return got, ctx


async def test_readings_sit_on_the_grid_without_gaps() -> None:
    config = SyntheticConfig(id="s1", driver="synthetic", interval=0.01, fields=3,
                             wake_interval=0.05, measurement="meter")
    readings, ctx = await collect(config, 0.6)
    assert ctx.status.state is DeviceState.ONLINE
    ks = [r.time_ns // 10_000_000 for r in readings]
    assert all(r.time_ns % 10_000_000 == 0 for r in readings)
    assert ks == list(range(ks[0], ks[0] + len(ks))), "gap or duplicate in the grid"
    assert len(ks) > 20
    for reading, k in zip(readings, ks, strict=True):
        assert reading.measurement == "meter"
        assert reading.fields == field_values(k, 3)


async def test_text_field_and_values_are_deterministic() -> None:
    assert field_values(12, 2, text=True) == {"f0": 21.0, "f1": 24.25, "seq": 12,
                                               "status": "state-2"}
    assert field_values(12, 2) == field_values(12, 2)
