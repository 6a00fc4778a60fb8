"""The pipeline in process: validation, tagging, pseudonymisation, commit batching."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.buffer import AppendResult
from gateway.pseudonym import Pseudonymizer, pseudonym_key
from gateway.reading import Reading
from tests.support.pipeline import committed_lines, make_pipeline

KEY = b"0123456789abcdef-test-key"


async def test_bad_values_dropped_and_counted_rest_kept(tmp_path: Path) -> None:
    pipeline, buffer, stats = await make_pipeline(tmp_path)
    pipeline.set_device("d1", {"building": "4", "site": "forged"})
    await pipeline.submit("d1", [
        # The ignores: drivers' bugs, on purpose.
        Reading("m", {}, {"ok": 1.5, "nan": math.nan, "inf": -math.inf, "obj": object()}, 1),  # type: ignore[dict-item]
        Reading("m", {}, {"nan": math.nan}, 2),
        Reading("m", {"room": "7", "bad": 3}, {"big": 2**63, "s": "x", "b": True}, 3),  # type: ignore[dict-item]
    ])
    await pipeline.flush()
    assert await committed_lines(buffer) == [
        b"m,building=4,device=d1,gateway=gw-a,site=site-a ok=1.5 1",
        b'm,building=4,device=d1,gateway=gw-a,room=7,site=site-a b=true,s="x" 3',
    ]
    assert stats.readings_in == 3 and stats.readings_committed == 2
    assert stats.dropped == {"invalid_value": 4, "invalid_type": 1, "no_fields": 1,
                             "invalid_tag": 1}
    await buffer.close()


async def test_pseudonymised_values_never_reach_buffer_or_listeners(tmp_path: Path) -> None:
    pipeline, buffer, _ = await make_pipeline(tmp_path)
    hide = Pseudonymizer(KEY)
    pipeline.set_pseudonymizer(hide)
    pipeline.set_device("gate", {}, pseudonymize=["card", "plate"])
    seen: list[Reading] = []
    pipeline.add_listener(lambda device, readings: seen.extend(readings))
    await pipeline.submit("gate", [
        Reading("access_event", {"plate": "粤B12345"}, {"card": "0004123456", "ok": True}, 5)])
    await pipeline.flush()
    lines = await committed_lines(buffer)
    await buffer.close()
    # The reading was committed, pseudonymised: the absence checks below are not vacuous.
    assert len(lines) == 1
    assert f'card="{hide("0004123456")}"'.encode() in lines[0]
    assert f'plate={hide("粤B12345")}'.encode() in lines[0]
    raw = b"".join(lines) + (tmp_path / "b.db").read_bytes()
    assert b"0004123456" not in raw and "粤B12345".encode() not in raw
    assert seen[0].fields["card"] == hide("0004123456") == Pseudonymizer(KEY)("0004123456")
    assert seen[0].tags["plate"] == hide("粤B12345")
    # a pseudonymised field gets its numeric twin (what VictoriaMetrics keeps); a tag not
    assert seen[0].fields["card_key"] == int(hide("0004123456")[:12], 16) < 2 ** 48
    assert f'card_key={int(hide("0004123456")[:12], 16)}i'.encode() in lines[0]
    assert "plate_key" not in seen[0].fields and "plate_key" not in seen[0].tags
    assert len(hide("x")) == 16 and hide("a") != hide("b")
    assert Pseudonymizer(b"another-key-0123456789")("0004123456") != hide("0004123456")


async def test_pseudonym_key_never_replaces_a_field_of_the_driver(tmp_path: Path) -> None:
    pipeline, buffer, _ = await make_pipeline(tmp_path)
    hide = Pseudonymizer(KEY)
    pipeline.set_pseudonymizer(hide)
    pipeline.set_device("gate", {}, pseudonymize=["card", "plate"])
    seen: list[Reading] = []
    pipeline.add_listener(lambda device, readings: seen.extend(readings))
    await pipeline.submit("gate", [
        Reading("access_event", {}, {"card": "1", "card_key": 7, "plate": 99}, 5)])
    await pipeline.flush()
    await buffer.close()
    (reading,) = seen
    assert reading.fields["card_key"] == 7  # the driver's own field is kept as it was
    assert reading.fields["plate"] == hide(99)  # any value type is hidden as text
    assert reading.fields["plate_key"] == int(hide(99)[:12], 16)


async def test_submit_and_wait_returns_after_commit(tmp_path: Path) -> None:
    pipeline, buffer, stats = await make_pipeline(tmp_path)
    runner = asyncio.create_task(pipeline.run())
    await pipeline.submit_and_wait("d", [Reading("m", {}, {"v": 1}, 10)])
    assert stats.readings_committed == 1
    assert len(await committed_lines(buffer)) == 1
    runner.cancel()
    await buffer.close()


async def test_cancelled_flush_neither_loses_nor_duplicates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutdown cancels the commit loop mid-append; the final flush must not commit the
    same lines again (the append finishes in the buffer thread regardless)."""
    pipeline, buffer, stats = await make_pipeline(tmp_path)
    real_append = buffer.buffer.append
    entered = threading.Event()

    def slow_append(lines: Sequence[bytes], oldest_ns: int,
                    newest_ns: int) -> AppendResult:  # runs in the buffer's thread
        entered.set()
        time.sleep(0.3)  # a slow SD card
        return real_append(lines, oldest_ns, newest_ns)

    monkeypatch.setattr(buffer.buffer, "append", slow_append)
    await pipeline.submit("d", [Reading("m", {}, {"v": i}, i + 1) for i in range(100)])
    flushing = asyncio.create_task(pipeline.flush())
    await asyncio.to_thread(entered.wait)
    flushing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flushing
    await pipeline.flush()  # what shutdown does next
    assert (await buffer.stats()).committed_total == 100
    assert stats.readings_committed == 100 and pipeline.pending == 0
    await buffer.close()


def test_pseudonym_key_is_the_tokens_first_48_bits() -> None:
    assert pseudonym_key("00000000ff01ffff") == 0xFF01
    assert pseudonym_key("ffffffffffff") == 2 ** 48 - 1
    assert pseudonym_key("not-hex-token") is None and pseudonym_key("") is None


async def test_a_waiter_of_a_failed_commit_is_answered_when_its_lines_commit_later(
        tmp_path: Path) -> None:
    """A commit fails while new readings arrive (they get a batch future of their own);
    the failed batch's lines are requeued in front of them. Whoever waited on the
    failed batch must be answered when the retry commits them: the requeue used to drop
    that future and its waiters hung forever (an MQTT ack, an HTTP answer)."""
    pipeline, buffer, _stats = await make_pipeline(tmp_path)
    real_append = buffer.append
    gate = asyncio.Event()
    calls = 0

    async def append_failing_once(*args: object, **kwargs: object) -> AppendResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()  # the second batch arrives while this commit is running
            raise OSError("disk I/O error (once)")
        return await real_append(*args, **kwargs)  # type: ignore[arg-type]

    buffer.append = append_failing_once  # type: ignore[method-assign]
    await pipeline.submit("d1", [Reading("m", {}, {"v": 1}, 1_000)])
    first_waiter = asyncio.create_task(pipeline.wait_stored())
    failing = asyncio.create_task(pipeline.flush())
    await asyncio.sleep(0)
    await pipeline.submit("d1", [Reading("m", {}, {"v": 2}, 2_000)])
    second_waiter = asyncio.create_task(pipeline.wait_stored())
    gate.set()
    with pytest.raises(OSError):
        await failing
    await pipeline.flush()  # the supervisor's retry
    assert await asyncio.wait_for(first_waiter, 10) is True
    assert await asyncio.wait_for(second_waiter, 10) is True
    assert len([line for line in await committed_lines(buffer) if line]) == 2
    await buffer.close()
