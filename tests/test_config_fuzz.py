"""Fuzz the config checker: any document gives a config or a ConfigError, nothing else.

The documents come from tests/config_fuzz.py (mutated shipped configs, hostile values,
tags, anchors, aliases, merges, bombs). ``load_config`` is what ``iotgw check`` and a
SIGHUP reload run. Fixed seed and 300 examples here; ``-m slow`` runs 3,000 random ones. A
handful of the same documents also go to one running gateway by SIGHUP.
"""

from __future__ import annotations

import random
import signal
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import yamlsource
from gateway.config.loader import LoadedConfig, load_config
from gateway.errors import ConfigError
from tests.config_fuzz import hostile_document
from tests.gwproc import GatewayProcess
from tests.support.files import file_lines


def _logged_since(gw: GatewayProcess, seen: int, prefixes: tuple[str, ...],
                  record: dict[str, Any]) -> bool:
    """A log record written after the first ``seen`` that starts with one of ``prefixes``."""
    return gw.records.index(record) >= seen and record["msg"].startswith(prefixes)

FUZZ_MAX_NODES = 20_000
"""The expansion limit during fuzzing: the same code path as 1,000,000, 50x cheaper per
alias bomb (the real limit's linear cost is measured in test_config_hostile)."""


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module", autouse=True)
def small_expansion_limit() -> Iterator[None]:
    saved = yamlsource.MAX_NODES
    yamlsource.MAX_NODES = FUZZ_MAX_NODES
    yield
    yamlsource.MAX_NODES = saved


def check_document(workdir: Path, text: str) -> None:
    """The property: a LoadedConfig or a ConfigError with usable messages."""
    path = workdir / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        result = load_config(path, environ={"HOME": "/home/fuzz"})
    except ConfigError as exc:
        assert exc.problems, "a ConfigError without problems"
        assert all(isinstance(p, str) and p.startswith(str(path)) for p in exc.problems), \
            exc.problems
        return
    assert isinstance(result, LoadedConfig)


FUZZ = settings(derandomize=True, max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_checker_returns_config_or_config_error(workdir: Path, rng: random.Random) -> None:
    check_document(workdir, hostile_document(rng))


@pytest.mark.soak  # deselected by default (pyproject addopts); `pytest -m soak` runs it
@settings(FUZZ, derandomize=False, max_examples=3000)
@given(rng=st.randoms(use_true_random=False))
def test_checker_returns_config_or_config_error_long(workdir: Path,
                                                     rng: random.Random) -> None:
    check_document(workdir, hostile_document(rng))


def test_fuzzed_documents_through_sighup_keep_gateway_committing(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    good = ("gateway: {id: gw-t, site: test-site, data_dir: data}\n"
            "buffer: {flush_interval: 50ms}\n"
            "devices: [{id: steady, driver: synthetic, interval: 20ms}]\n")
    config.write_text(good)
    rng = random.Random(10)
    documents = [hostile_document(rng) for _ in range(8)]
    gw = GatewayProcess(config, env={"HOME": "/home/fuzz"}).start()
    delivered: list[int] = []
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        for text in documents:
            config.write_text(text, encoding="utf-8", errors="surrogatepass")
            seen = len(gw.records)
            gw.signal(signal.SIGHUP)
            gw.wait_for_log(
                partial(_logged_since, gw, seen, ("reload rejected", "config reloaded")))
            config.write_text(good)  # a reload that passed must not leave the test's device
            seen = len(gw.records)
            gw.signal(signal.SIGHUP)
            gw.wait_for_log(partial(_logged_since, gw, seen, ("config reloaded",)))
            assert gw.proc is not None and gw.proc.poll() is None
            delivered.append(len(file_lines(tmp_path / "data")))
        time.sleep(0.3)
    finally:
        assert gw.stop() == 0, "".join(gw.raw[-30:])
    final = gw.wait_for_log(lambda r: r["msg"].startswith("stopped:"))
    assert final["readings_committed"] == final["readings_in"] > 0
    assert not any("Traceback" in line for line in gw.raw), "".join(gw.raw[-40:])
    assert len(file_lines(tmp_path / "data")) > delivered[-1] > delivered[0], \
        "readings stopped flowing while the fuzzed reloads came"
