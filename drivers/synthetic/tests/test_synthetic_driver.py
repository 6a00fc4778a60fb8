"""The synthetic driver: exact grid timestamps, values recomputable, catch-up bursts."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from drivers.synthetic.config import SyntheticConfig
from drivers.synthetic.driver import PERIOD, SyntheticDriver, field_values
from gateway.driver import DeviceContext, DeviceState
from gateway.reading import Reading

ROOT = Path(__file__).resolve().parents[3]


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
    # Floats repeat with PERIOD in k, seq does not.
    assert field_values(12 + PERIOD, 2) == {"f0": 21.0, "f1": 24.25, "seq": 12 + PERIOD}

    # Deterministic across processes (another hash seed, a cold cache): what the
    # end-to-end tests rely on when they recompute values from a stored timestamp.
    ks = [0, 1, 12, PERIOD - 1, PERIOD + 12, 1_700_000_000_123]
    code = ("from drivers.synthetic.driver import field_values\n"
            f"print(repr([field_values(k, 5, text=True) for k in {ks!r}]))")
    env = {**os.environ, "PYTHONHASHSEED": "4242", "PYTHONPATH": str(ROOT)}
    other = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=60, check=True)
    assert ast.literal_eval(other.stdout) == [field_values(k, 5, text=True) for k in ks]

    # The driver emits the text field when asked, with the values of its grid index.
    config = SyntheticConfig(id="s2", driver="synthetic", interval=0.01, fields=2,
                             text_field=True, wake_interval=0.05)
    readings, _ = await collect(config, 0.3)
    assert len(readings) > 5
    for reading in readings:
        k = reading.time_ns // 10_000_000
        assert reading.fields == field_values(k, 2, text=True)
        assert reading.fields["status"] == f"state-{k % 5}"
