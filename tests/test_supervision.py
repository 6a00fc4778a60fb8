"""No task dies silently (issue 10): a failing task is logged once with its traceback,
counted, shown as failing (readiness, the owner's state through ``on_failure``) and
restarted; once it has run healthy for a while it is declared recovered at INFO. Also
the per-message isolation in the pieces that serve many devices: the pipeline's encoder
and the MQTT intake."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from drivers.mqtt.broker import Attachment, DeviceBroker
from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.mapping import Mapper
from gateway.driver import DeviceContext
from gateway.mqtt.client import Message
from gateway.reading import Reading
from gateway.supervisor import Supervisor
from tests.plugin_stub import StubGateway
from tests.support.pipeline import committed_lines, make_pipeline
from tests.support.wait import eventually


async def test_failing_task_is_logged_once_counted_shown_and_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    runs = 0
    failures: list[BaseException] = []
    recovered = asyncio.Event()
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        healthy.set()
        await asyncio.Event().wait()  # healthy from now on

    caplog.set_level(logging.INFO, logger="iotgw.supervisor")
    async with asyncio.TaskGroup() as group:
        sup = Supervisor(group, restart_cap=0.05, healthy_after=0.3)
        sup.start("intake", flaky, on_failure=failures.append, on_recovered=recovered.set)
        async with asyncio.timeout(20):  # hang guard only
            await healthy.wait()
        assert sup.restarts == {"intake": 3}
        assert sup.failing["intake"].failures == 3
        assert "surrogates not allowed" in sup.failing["intake"].error
        assert len(failures) == 3 and all(isinstance(f, UnicodeEncodeError) for f in failures)
        async with asyncio.timeout(20):
            await recovered.wait()
        assert "intake" not in sup.failing
        await sup.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "the same failure is logged once, then counted"
    assert errors[0].exc_info is not None, "with its traceback"
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("task intake has run" in m and "repeated 2 more times" in m for m in info), info


async def test_an_error_that_will_not_fix_itself_waits_the_cap() -> None:
    from gateway.errors import ConfigError, DeviceError

    async def broken() -> None:
        raise ConfigError(["no such bus"])

    async def flaky() -> None:
        raise DeviceError("no answer")

    async with asyncio.TaskGroup() as group:
        sup = Supervisor(group, restart_cap=30.0)
        sup.start("broken", broken)
        sup.start("flaky", flaky)
        await eventually(lambda: len(sup.failing) >= 2, within=10, every=0.01)
        assert sup.failing["broken"].retry_in == 30.0, "not retryable: the cap at once"
        assert sup.failing["flaky"].retry_in <= 1.0, "retryable: the backoff's first step"
        await sup.stop()


async def test_unencodable_reading_is_dropped_alone(tmp_path: Path) -> None:
    pipeline, buffer, stats = await make_pipeline(tmp_path)
    heard: list[Reading] = []
    pipeline.add_listener(lambda _device, readings: heard.extend(readings))
    await pipeline.submit("d1", [
        Reading("m", {}, {"n": 1}, 1),
        Reading("m", {}, {"label": "\ud800"}, 2),
        Reading("m", {"room": "\udfff"}, {"n": 3}, 3),
        Reading("m", {}, {"n": 4}, 4),
    ])
    await pipeline.flush()
    assert await committed_lines(buffer) == [
        b"m,device=d1,gateway=gw-a,site=site-a n=1i 1",
        b"m,device=d1,gateway=gw-a,site=site-a n=4i 4",
    ]
    assert [r.time_ns for r in heard] == [1, 4], "listeners see only what is stored"
    assert stats.dropped == {"unencodable": 2}
    await buffer.close()


async def test_mqtt_intake_isolates_a_poison_message() -> None:
    """A pipeline that refuses one reading, as a store-side bug would (the real path
    end to end is tests/test_poison.py)."""
    gateway = StubGateway(refuse=lambda rs: any(r.fields.get("seq") == 13 for r in rs))
    broker = DeviceBroker(gateway)
    config = MqttDeviceConfig(id="cam", driver="mqtt", topic="a/+/ev", measurement="ev",
                              fields={"seq": "$.seq"})
    # [arg-type]: MQTT devices never emit through their context (the broker submits)
    ctx = DeviceContext("cam", emit=None)  # type: ignore[arg-type]
    broker.attach(Attachment(Mapper(config), ctx))
    batch = [Message(f"a/{n}/ev", f'{{"seq": {n}}}'.encode(), 1, False, False, n, 0)
             for n in range(10, 17)]
    groups = broker._decode(batch)
    assert await broker._submit(groups) == "cam"
    stored = [r.fields["seq"] for _d, rs in gateway.submitted for r in rs]
    assert sorted(stored) == [10, 11, 12, 14, 15, 16]
    assert [(d.device_id, d.payload) for d in gateway.dead] == [("cam", b'{"seq": 13}')]
    assert gateway.dead[0].reason.startswith("poison: ValueError: refused")
    assert ctx.status.counters == {"poison": 1}


def test_problem_log_summarises_a_steady_problem(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.problems import ProblemLog

    problems = ProblemLog(logging.getLogger("iotgw.test.problems"))
    caplog.set_level(logging.INFO, logger="iotgw.test.problems")
    for n in range(5):
        problems.report("k", "refuses lines: conflict", detail=f"first: line {n}",
                        level=logging.WARNING, summary_every=3600)
    problems.report("k", "refuses lines: conflict", level=logging.WARNING, summary_every=0)
    assert [r.getMessage() for r in caplog.records] == [
        "refuses lines: conflict (first: line 0)",
        "refuses lines: conflict (5 more times in the last 0s)"]
    assert problems.totals == {"k": 6}


async def test_a_time_no_store_can_take_is_dropped_alone(tmp_path: Path) -> None:
    """Any driver: a time outside int64 ns used to make the commit itself raise, which
    stopped every device's commits (found by an outside probe)."""
    pipeline, buffer, stats = await make_pipeline(tmp_path)
    await pipeline.submit("d1", [Reading("m", {}, {"n": 1}, 1), Reading("m", {}, {"n": 2}, 2**63),
                                 Reading("m", {}, {"n": 3}, -(2**64)),
                                 # [arg-type]: a float time, a driver's bug on purpose
                                 Reading("m", {}, {"n": 4}, 1.5),  # type: ignore[arg-type]
                                 Reading("m", {}, {"n": 5}, 5)])
    await pipeline.flush()
    assert await committed_lines(buffer) == [b"m,device=d1,gateway=gw-a,site=site-a n=1i 1",
                                             b"m,device=d1,gateway=gw-a,site=site-a n=5i 5"]
    assert stats.dropped == {"invalid_time": 3}
    await buffer.close()
