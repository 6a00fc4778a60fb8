"""ProblemLog: one line per kind of problem, and a bound on how many kinds it remembers."""

from __future__ import annotations

import logging

import pytest

from gateway.problems import OVERFLOW_KEY, ProblemLog


def test_distinct_keys_past_the_bound_are_one_problem(caplog: pytest.LogCaptureFixture) -> None:
    """Keys carry peers (a source address): 100,000 slow clients from an IPv6 prefix logged
    a line each and grew the log's memory without end (outside probe of issue 13)."""
    problems = ProblemLog(logging.getLogger("iotgw.test.bound"), max_keys=50)
    with caplog.at_level(logging.WARNING, logger="iotgw.test.bound"):
        for n in range(10_000):
            problems.report(f"slow_client:2001:db8::{n:x}", f"slow client 2001:db8::{n:x}",
                            level=logging.WARNING)
    assert len(problems.totals) == 51
    assert problems.totals[OVERFLOW_KEY] == 10_000 - 50
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 51, lines[-3:]
    assert "more than 50 distinct problems" in lines[-1]
    # a key it already knows keeps being counted under its own name
    problems.report("slow_client:2001:db8::0", "slow client 2001:db8::0")
    assert problems.totals["slow_client:2001:db8::0"] == 2
