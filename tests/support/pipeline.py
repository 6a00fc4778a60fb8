"""A pipeline in process over a real buffer in a temp dir, for the tests that feed it
readings directly (pipeline, supervision, MQTT profile fuzzing)."""

from __future__ import annotations

from pathlib import Path

from gateway.buffer import AsyncBuffer, Buffer
from gateway.pipeline import Pipeline
from gateway.stats import GatewayStats


async def make_pipeline(tmp_path: Path) -> tuple[Pipeline, AsyncBuffer, GatewayStats]:
    buffer = AsyncBuffer(Buffer(tmp_path / "b.db", max_bytes=10 * 1024**2,
                                when_full="drop_oldest"))
    await buffer.open()
    await buffer.register_sinks(["s"])
    stats = GatewayStats()
    pipeline = Pipeline(buffer, stats, site="site-a", gateway_id="gw-a", flush_interval=0.05,
                        max_pending=10_000)
    return pipeline, buffer, stats


async def committed_lines(buffer: AsyncBuffer) -> list[bytes]:
    batch = await buffer.read("s", 100_000)
    return [] if batch is None else batch.payload.split(b"\n")
