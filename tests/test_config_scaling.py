"""Checking a config costs time linear in its size (issue 10: a 10 MB config took 100+ s).

No wall-clock limits (a shared machine): the CPU time of checking N and 4N devices is
compared in one run. Linear is x4, quadratic x16; the bound x8 leaves room for noise.
Both a valid compound and one full of mistakes (typos, unknown buses, duplicate ids:
the error paths format, sort and cross-check) are measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench.bench_config import make_config
from gateway.config.loader import load_config
from gateway.errors import ConfigError

SMALL = 400
RATIO_LIMIT = 8.0


def with_mistakes(text: str) -> str:
    """Every 5th device misspelt, every 7th on a bus that does not exist, some ids twice."""
    out = []
    for number, line in enumerate(text.splitlines()):
        if line.startswith("    interval:") and number % 5 == 0:
            line = line.replace("interval", "intervall")
        elif line.startswith("    bus:") and number % 7 == 0:
            line = "    bus: nowhere"
        elif line.startswith("  - id: synth-") and number % 3 == 0:
            line = "  - id: synth-twice"
        out.append(line)
    return "\n".join(out) + "\n"


def cpu_seconds_to_check(path: Path, valid: bool) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.process_time()
        try:
            load_config(path, environ={})
            assert valid, "the config with mistakes was accepted"
        except ConfigError as exc:
            assert not valid and len(exc.problems) > 10, exc.problems[:5]
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize("valid", [True, False], ids=["valid", "with-mistakes"])
def test_check_time_grows_linearly_with_devices(tmp_path: Path, valid: bool) -> None:
    times: dict[int, float] = {}
    for count in (SMALL, 4 * SMALL):
        text = make_config(count)
        path = tmp_path / f"gw-{count}.yaml"
        path.write_text(text if valid else with_mistakes(text))
        if not times:
            cpu_seconds_to_check(path, valid)  # warm up: imports, profile caches
        times[count] = cpu_seconds_to_check(path, valid)
    ratio = times[4 * SMALL] / times[SMALL]
    assert ratio < RATIO_LIMIT, f"4x the devices took {ratio:.1f}x the CPU time: {times}"
