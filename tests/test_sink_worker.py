"""gateway/sinks/worker.py: a sink's thread, one blocking call at a time (real threads).

The influxdb sink's tests (tests/test_sinks.py) show the same properties against real
HTTP servers; these pin down the thread's own contract.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest

from gateway.sinks.worker import SinkThread
from tests.support.wait import eventually


def named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


async def test_results_and_exceptions_come_back_from_a_named_daemon_thread() -> None:
    worker = SinkThread("sink-unit")
    assert named("sink-unit") == []  # started by the first call, not before
    assert await worker.call(lambda: threading.current_thread().name) == "sink-unit"
    (thread,) = named("sink-unit")
    assert thread.daemon

    def fail() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await worker.call(fail)
    assert await worker.call(lambda: 42) == 42  # the thread survived the exception
    assert await worker.stop(None, wait=30) is True
    await eventually(lambda: not thread.is_alive())


async def test_a_call_after_a_stop_runs_only_once_the_abandoned_one_returned() -> None:
    """The forwarder cancels a write and closes the sink; the supervisor reopens it. The
    new thread must not run the next call beside the old thread's hung one."""
    worker = SinkThread("sink-order")
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def hung() -> None:
        order.append("hung: start")
        started.set()
        release.wait()
        order.append("hung: end")

    first = asyncio.create_task(worker.call(hung))
    await asyncio.to_thread(started.wait)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    cleaned: list[str] = []
    assert await worker.stop(lambda: cleaned.append("cleanup"), wait=0.05) is False
    assert worker.busy and cleaned == []  # the cleanup waits behind the hung call

    second = asyncio.create_task(worker.call(lambda: order.append("next")))
    done, _ = await asyncio.wait({second}, timeout=0.3)  # a chance to run too early
    assert not done
    release.set()
    await second
    assert order == ["hung: start", "hung: end", "next"]
    await eventually(lambda: cleaned == ["cleanup"])
    assert await worker.stop(None, wait=30) is True
    await eventually(lambda: not named("sink-order"))


async def test_an_abandoned_calls_exception_is_not_logged_as_never_retrieved(
        caplog: pytest.LogCaptureFixture) -> None:
    worker = SinkThread("sink-quiet")
    started, release = threading.Event(), threading.Event()

    def fails_later() -> None:
        started.set()
        release.wait()
        raise OSError("reset while nobody waited")

    task = asyncio.create_task(worker.call(fails_later))
    await asyncio.to_thread(started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    caplog.set_level(logging.ERROR, logger="asyncio")
    release.set()
    await worker.idle()
    assert await worker.stop(None, wait=30) is True
    del task, worker  # the last references to the abandoned call's future
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
