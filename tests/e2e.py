"""Helpers for end-to-end tests: configs, buffer lag, synthetic grid arithmetic."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gateway.buffer import BufferStats, read_stats
from tests.support.wait import eventually_sync


def write_config(path: Path, *, sinks: str, devices: str = "[]", buffer: str = "") -> None:
    path.write_text(
        "gateway: {id: gw-e2e, site: e2e-site, data_dir: data}\n"
        f"buffer: {{flush_interval: 100ms{', ' + buffer if buffer else ''}}}\n"
        "sinks:\n" + textwrap.indent(textwrap.dedent(sinks), "  ")
        + "devices:\n" + textwrap.indent(textwrap.dedent(devices), "  "))


def wait_drained(buffer_path: Path, sinks: list[str], timeout: float = 60.0) -> None:
    """Hang guard: wait until every sink's cursor reached the end of the buffer."""

    def stats() -> BufferStats | None:
        return read_stats(buffer_path) if buffer_path.exists() else None

    eventually_sync(stats, until=lambda s: s is not None and all(
        name in s.sinks and s.sinks[name].lag_lines == 0 for name in sinks),
        within=timeout, every=0.2, what=f"sinks {sinks} drained")


def grid_index(ts_ms: int, interval_ms: int) -> int:
    assert ts_ms % interval_ms == 0, f"timestamp {ts_ms} is off the {interval_ms} ms grid"
    return ts_ms // interval_ms


def contiguous_runs(ks: list[int]) -> list[tuple[int, int]]:
    """[(first, last)] of each run of consecutive integers in sorted ``ks``."""
    runs: list[tuple[int, int]] = []
    for k in ks:
        if runs and k == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs
