"""The forwarder's one retry policy, against real InfluxDB 1.x and a scripted server.

Real InfluxDB 1.x gives genuine partial writes (a field type conflict); the in-process
aiohttp server stands beside it for answers a healthy server will not give on demand
(413 above a size, 429 with Retry-After, 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.buffer import AsyncBuffer, Buffer
from gateway.forwarder import Forwarder
from gateway.sinks.influxdb1 import InfluxDB1Sink, InfluxDB1SinkConfig
from gateway.stats import GatewayStats, SinkStats
from tests.support.servers import InfluxDB1
from tests.support.wait import eventually


async def filled_buffer(tmp_path: Path, lines: list[bytes], sink: str) -> AsyncBuffer:
    buffer = AsyncBuffer(Buffer(tmp_path / "b.db", max_bytes=50 * 1024**2,
                                when_full="drop_oldest", chunk_lines=1000))
    await buffer.open()
    await buffer.register_sinks([sink])
    await buffer.append(lines, 1, 1)
    return buffer


async def poll_until(done: Callable[[], bool], seconds: float = 60) -> None:
    """Poll counters the code under test updates; the timeout is a hang guard only."""
    await eventually(done, within=seconds)


async def run_until(forwarder: Forwarder, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(forwarder.run())
    try:
        await poll_until(done)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def sink_config(url: str, database: str, **extra: object) -> InfluxDB1SinkConfig:
    return InfluxDB1SinkConfig(type="influxdb1", url=url, database=database, **extra)


async def test_partial_write_drops_only_the_rejected_line(tmp_path: Path,
                                                          influx1: InfluxDB1) -> None:
    db = f"fwd_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    influx1.write_lines(db, "conflict,device=d v=1 1")  # makes v a float field
    lines = [f"conflict,device=d v={i}.5 {1000 + i}".encode() for i in range(40)]
    lines[17] = b'conflict,device=d v="text" 1017'  # field type conflict: refused
    config = sink_config(influx1.url, db, batch_lines=1000)
    buffer = await filled_buffer(tmp_path, lines, config.sink_name)
    stats = GatewayStats()
    event = asyncio.Event()
    forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, event, stats)
    await run_until(forwarder, lambda: stats.sink(config.sink_name).sent_batches == 1)
    sink_stats = stats.sink(config.sink_name)
    assert sink_stats.rejected_lines == 1 and sink_stats.sent_lines == 39
    assert (await buffer.stats()).sinks[config.sink_name].lag_lines == 0
    rows = influx1.select("SELECT v FROM conflict WHERE time > 999", db)
    assert sorted(r["time"] for r in rows) == [1000 + i for i in range(40) if i != 17]
    await buffer.close()


async def test_a_steady_refusal_is_logged_once_and_counted(
        tmp_path: Path, influx1: InfluxDB1, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 10, defect 4: the message used to quote the refused line, so "once per
    kind" never matched and a steady type conflict logged a WARNING per line."""
    db = f"fwd_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    influx1.write_lines(db, "steady,device=d v=1 1")
    lines = [(f'steady,device=d v="text {i}" {1000 + i}' if i % 3 == 0
              else f"steady,device=d v={i}.5 {1000 + i}").encode() for i in range(90)]
    config = sink_config(influx1.url, db, batch_lines=10)
    buffer = await filled_buffer(tmp_path, lines, config.sink_name)
    stats = GatewayStats()
    forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
    caplog.set_level(logging.INFO, logger="iotgw.forwarder")
    sink_stats = stats.sink(config.sink_name)
    await run_until(forwarder, lambda: sink_stats.sent_lines + sink_stats.rejected_lines == 90)
    assert sink_stats.rejected_lines == 30 and sink_stats.sent_lines == 60
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "field type conflict" in warnings[0] and "dropped=30" in warnings[0]
    rows = influx1.select("SELECT v FROM steady WHERE time > 999", db)
    assert len(rows) == 60
    await buffer.close()


@contextlib.asynccontextmanager
async def scripted(handler: Callable[[web.Request, bytes], web.Response]
                   ) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        return handler(request, await request.read())

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/write", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)  # started: a listening socket
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


SINK = "influxdb1"
"""The name ``sink_config`` gives its sink (a sink's type, when no name is set)."""


@contextlib.asynccontextmanager
async def forwarding(tmp_path: Path, url: str, lines: list[bytes], **settings: object
                     ) -> AsyncIterator[tuple[AsyncBuffer, SinkStats]]:
    """An influxdb1 forwarder from a filled buffer to ``url``, running until the block
    ends; yields the buffer and the sink's stats."""
    config = sink_config(url, "db", **settings)
    buffer = await filled_buffer(tmp_path, lines, config.sink_name)
    stats = GatewayStats()
    forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
    task = asyncio.create_task(forwarder.run())
    try:
        yield buffer, stats.sink(config.sink_name)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_413_splits_until_batches_fit(tmp_path: Path) -> None:
    received: list[bytes] = []

    def handler(request: web.Request, body: bytes) -> web.Response:
        if body.count(b"\n") + 1 > 64:
            return web.Response(status=413, text="too big")
        received.extend(body.split(b"\n"))
        return web.Response(status=204)

    lines = [f"m v={i} {i}".encode() for i in range(1000)]
    async with scripted(handler) as url:
        config = sink_config(url, "db", batch_lines=1000)
        buffer = await filled_buffer(tmp_path, lines, config.sink_name)
        stats = GatewayStats()
        forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
        await run_until(forwarder, lambda: stats.sink(config.sink_name).sent_lines == 1000)
    assert received == lines
    assert stats.sink(config.sink_name).rejected_lines == 0
    await buffer.close()


async def test_429_retry_after_is_honoured(tmp_path: Path) -> None:
    attempts: list[float] = []

    def handler(request: web.Request, body: bytes) -> web.Response:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        return web.Response(status=204)

    async with scripted(handler) as url:
        config = sink_config(url, "db", retry_max=0.1)
        buffer = await filled_buffer(tmp_path, [b"m v=1 1"], config.sink_name)
        stats = GatewayStats()
        forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
        await run_until(forwarder, lambda: stats.sink(config.sink_name).sent_lines == 1)
    # The backoff alone (capped at 0.1 s) would retry at once; Retry-After asked for 2 s.
    assert attempts[1] - attempts[0] >= 2.0
    await buffer.close()


async def test_401_marks_sink_failed_and_keeps_everything(tmp_path: Path) -> None:
    status = {"code": 401}
    calls: list[int] = []

    def handler(request: web.Request, body: bytes) -> web.Response:
        calls.append(status["code"])
        return web.Response(status=status["code"], text="unauthorized")

    async with scripted(handler) as url:
        config = sink_config(url, "db", auth_retry=1.0)
        buffer = await filled_buffer(tmp_path, [b"m v=1 1", b"m v=2 2"], config.sink_name)
        stats = GatewayStats()
        sink_stats = stats.sink(config.sink_name)
        forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
        task = asyncio.create_task(forwarder.run())
        await poll_until(lambda: sink_stats.state == "failed")
        assert (await buffer.stats()).sinks[config.sink_name].lag_lines == 2
        status["code"] = 204  # credentials fixed on the server side
        await poll_until(lambda: sink_stats.sent_lines >= 2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert sink_stats.state == "ok" and calls[0] == 401 and calls[-1] == 204
    assert "HTTP 401" in (sink_stats.last_error or "")
    await buffer.close()


async def test_a_stop_during_a_hung_influxdb_write_hangs_up_and_resends_after_restart(
        tmp_path: Path) -> None:
    """The influxdb sink writes from its own thread, which a cancel cannot interrupt. A
    stop while a write hangs still ends the forwarder (after STOP_GRACE): the sink's
    close hangs up on the write, so its thread is free again although the server still
    holds the request; the batch stays unacknowledged, and the restarted forwarder (the
    supervisor reruns ``run`` on the same sink) sends it again."""
    from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig

    release = asyncio.Event()
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.read())  # gunzipped by aiohttp
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/api/v2/write", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    lines = [f"m v={i} {i}".encode() for i in range(10)]
    config = InfluxDBSinkConfig(type="influxdb", url=url, bucket="b", timeout="60s")
    buffer = await filled_buffer(tmp_path, lines, config.sink_name)
    stats = GatewayStats()
    sink = InfluxDBSink(config)
    forwarder = Forwarder(sink, config, buffer, asyncio.Event(), stats)
    try:
        task = asyncio.create_task(forwarder.run())
        await poll_until(lambda: len(bodies) == 1)
        task.cancel()  # a stop while the write hangs
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await poll_until(lambda: not sink._thread.busy)  # hung up on; the server holds on
        assert not release.is_set()
        assert (await buffer.stats()).sinks[config.sink_name].lag_lines == 10
        assert stats.sink(config.sink_name).sent_lines == 0

        release.set()
        task = asyncio.create_task(forwarder.run())
        await poll_until(lambda: stats.sink(config.sink_name).sent_lines == 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        release.set()
        await runner.cleanup()
    assert bodies == [b"\n".join(lines)] * 2  # sent again after the restart
    assert (await buffer.stats()).sinks[config.sink_name].lag_lines == 0
    await buffer.close()


class SlowAckBuffer(AsyncBuffer):
    """An AsyncBuffer whose ``ack`` waits for the test: the window between a sink having
    stored a batch and the buffer having recorded it, where a stop used to land."""

    def __init__(self, buffer: Buffer) -> None:
        super().__init__(buffer)
        self.acking = asyncio.Event()
        self.release = asyncio.Event()

    async def ack(self, sink: str, last_id: int) -> None:
        self.acking.set()
        await self.release.wait()
        await super().ack(sink, last_id)


async def test_a_stop_while_the_buffer_records_a_delivery_lets_it_finish(
        tmp_path: Path) -> None:
    """A stop between the file sink's write and the buffer's record of it used to cancel
    the record: the next start wrote the batch to the file again (seen in CI as 50
    repeated lines). The record now finishes within STOP_GRACE, so the file holds each
    line once across the restart."""
    from gateway.sinks.file import FileSink, FileSinkConfig

    config = FileSinkConfig(type="file")
    buffer = SlowAckBuffer(Buffer(tmp_path / "b.db", max_bytes=50 * 1024**2,
                                  when_full="drop_oldest", chunk_lines=1000))
    await buffer.open()
    await buffer.register_sinks([config.sink_name])
    lines = [f"m v={i} {i}".encode() for i in range(10)]
    await buffer.append(lines, 1, 1)
    stats = GatewayStats()
    sink = FileSink(config, tmp_path)
    forwarder = Forwarder(sink, config, buffer, asyncio.Event(), stats)
    task = asyncio.create_task(forwarder.run())
    await eventually(buffer.acking.is_set)
    task.cancel()  # the stop, while the delivery is being recorded
    await asyncio.sleep(0)
    buffer.release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert (await buffer.stats()).sinks[config.sink_name].lag_lines == 0

    task = asyncio.create_task(Forwarder(FileSink(config, tmp_path), config, buffer,
                                         asyncio.Event(), stats).run())
    await asyncio.sleep(0.2)  # a restarted forwarder would resend an unrecorded batch now
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    def written() -> list[bytes]:
        return b"".join(p.read_bytes() for p in sorted(tmp_path.rglob("*.lp"))).splitlines()

    assert await asyncio.to_thread(written) == lines
    await buffer.close()


async def test_a_400_that_is_not_about_lines_keeps_the_data(tmp_path: Path) -> None:
    """An outside probe pointed an ``influxdb1`` sink at a TLS port over http://: nginx
    answered 400 with an HTML page, the forwarder bisected every batch down to single
    lines and dropped them all (570 of 570 readings), state "ok". Such an answer is not
    a refusal of lines: the sink is failed, the data stays buffered and goes out once
    the server is right."""
    answer = {"status": 400}

    def handler(request: web.Request, body: bytes) -> web.Response:
        if answer["status"] == 400:
            return web.Response(status=400, content_type="text/html", text=(
                "<html><head><title>400 The plain HTTP request was sent to HTTPS port"
                "</title></head><body><h1>400 Bad Request</h1></body></html>"))
        received.extend(body.split(b"\n"))
        return web.Response(status=204)

    received: list[bytes] = []
    lines = [f"m v={i} {i}".encode() for i in range(50)]
    async with scripted(handler) as url, \
            forwarding(tmp_path, url, lines, auth_retry=1.0) as (buffer, sink_stats):
        await poll_until(lambda: sink_stats.state == "failed")
        assert sink_stats.rejected_lines == 0
        assert (await buffer.stats()).sinks[SINK].lag_lines == 50
        answer["status"] = 204  # the installer fixes the URL
        await poll_until(lambda: sink_stats.sent_lines == 50)
    assert received == lines and sink_stats.state == "ok"
    assert "not a refusal of lines" in (sink_stats.last_error or "")
    await buffer.close()


async def test_a_503_during_bisection_resumes_it(tmp_path: Path) -> None:
    """A refused batch is bisected until the refused lines are isolated. A 503 in the
    middle used to restart the whole batch's bisection, so with a poisoned device and an
    occasionally busy server delivery stopped for good (an outside probe: the healthy
    device stuck at 168 of 2017 readings), and refused lines were counted at every
    restart. Now the attempt after a failure goes on with what was left: every good
    line arrives and each refused line is counted once."""
    requests = {"n": 0}
    received: list[bytes] = []

    def handler(request: web.Request, body: bytes) -> web.Response:
        requests["n"] += 1
        if requests["n"] % 4 == 0:  # the server is busy every 4th request
            return web.Response(status=503, text="busy")
        if b"poison" in body:  # all or nothing, as InfluxDB 2.x refuses a parse error
            return web.Response(status=400, text='{"error":"unable to parse line"}')
        received.extend(body.split(b"\n"))
        return web.Response(status=204)

    lines = [(f"m,d=poison v={i} {i}" if i % 20 == 7 else f"m,d=ok v={i} {i}").encode()
             for i in range(200)]
    async with scripted(handler) as url:
        config = sink_config(url, "db", batch_lines=1000, retry_max=0.1)
        buffer = await filled_buffer(tmp_path, lines, config.sink_name)
        stats = GatewayStats()
        sink_stats = stats.sink(config.sink_name)
        forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
        await run_until(forwarder, lambda: sink_stats.sent_batches == 1)
    good = [line for line in lines if b"poison" not in line]
    assert sorted(set(received)) == sorted(good)
    assert sink_stats.rejected_lines == 10 and sink_stats.sent_lines == 190
    assert (await buffer.stats()).sinks[config.sink_name].lag_lines == 0
    await buffer.close()


async def test_an_accepted_piece_resets_the_backoff(tmp_path: Path) -> None:
    """A bisection of a big batch takes many requests; a 503 now and then grew the
    backoff towards ``retry_max`` although pieces were accepted in between (an outside
    probe: the healthy device delivered 51 of 2,928 readings in 60 s). The backoff now
    starts over after every accepted piece. The waits are recorded, not slept."""
    requests = {"n": 0}

    def handler(request: web.Request, body: bytes) -> web.Response:
        requests["n"] += 1
        if requests["n"] % 4 == 0:
            return web.Response(status=503, text="busy")
        if b"poison" in body:
            return web.Response(status=400, text='{"error":"unable to parse line"}')
        return web.Response(status=204)

    lines = [(f"m,d=poison v={i} {i}" if i % 20 == 7 else f"m,d=ok v={i} {i}").encode()
             for i in range(200)]
    async with scripted(handler) as url:
        config = sink_config(url, "db", batch_lines=1000, retry_max=60)
        buffer = await filled_buffer(tmp_path, lines, config.sink_name)
        stats = GatewayStats()
        forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
        backoff = forwarder._backoff
        waits: list[float] = []
        real_next = backoff.next

        def recorded() -> float:
            waits.append(real_next())
            return 0.0

        backoff.next = recorded  # type: ignore[method-assign]
        await run_until(forwarder, lambda: stats.sink(config.sink_name).sent_batches == 1)
    assert len(waits) >= 5
    assert max(waits) <= 4.0, waits  # a few 503s in a row at most, never towards 60 s
    assert stats.sink(config.sink_name).rejected_lines == 10
    await buffer.close()


async def test_a_store_refusing_every_line_of_a_batch_drops_none(tmp_path: Path) -> None:
    """Whatever a 400 says, a store that refuses every line of a batch of several is not
    refusing a few bad lines (an outside probe's proxy answers, matched as refusals of
    lines, dropped whole streams). The batch stays buffered and the sink failed; later
    attempts send it whole (one request each, no new bisection) until the store takes
    it."""
    answer = {"refuse": True}
    bodies: list[bytes] = []

    def handler(request: web.Request, body: bytes) -> web.Response:
        bodies.append(body)
        if answer["refuse"]:
            return web.Response(status=400, text='{"error":"unable to parse points"}')
        return web.Response(status=204)

    lines = [f"m v={i} {i}".encode() for i in range(20)]
    async with scripted(handler) as url, \
            forwarding(tmp_path, url, lines, auth_retry=1.0) as (buffer, sink_stats):
        await poll_until(lambda: sink_stats.state == "failed")
        bisection = len(bodies)
        assert bisection == 39  # 20 lines bisected to single lines: 2 * 20 - 1
        assert "refused every one of the 20 lines" in (sink_stats.last_error or "")
        assert sink_stats.rejected_lines == 0 and sink_stats.sent_lines == 0
        assert (await buffer.stats()).sinks[SINK].lag_lines == 20
        await poll_until(lambda: len(bodies) >= bisection + 2)  # two retries
        assert bodies[bisection:] == [b"\n".join(lines)] * (len(bodies) - bisection)
        answer["refuse"] = False
        await poll_until(lambda: sink_stats.sent_lines == 20)
    assert sink_stats.rejected_lines == 0 and sink_stats.state == "ok"
    assert (await buffer.stats()).sinks[SINK].lag_lines == 0
    await buffer.close()


async def test_a_batch_evicted_while_its_retry_waits_is_not_sent_from_memory(
        tmp_path: Path) -> None:
    """The forwarder keeps a failed batch to go on with it (bisection progress). When a
    full buffer evicted its chunks meanwhile, they were still sent from memory while the
    buffer counted them as dropped (an outside probe: "dropped" 80 and 164 readings above
    what was missing). A retry goes on with the held batch only while the buffer still
    holds the same chunks."""
    received: list[bytes] = []
    first_refused = asyncio.Event()

    def handler(request: web.Request, body: bytes) -> web.Response:
        if not first_refused.is_set():
            first_refused.set()
            return web.Response(status=503, text="busy", headers={"Retry-After": "2"})
        received.extend(body.split(b"\n"))
        return web.Response(status=204)

    old = [f"m v={i} {i}".encode() for i in range(5)]
    new = [f"m v={i} {i}".encode() for i in range(100, 115)]
    buffer = AsyncBuffer(Buffer(tmp_path / "b.db", max_bytes=sum(map(len, new)) + 20,
                                when_full="drop_oldest", chunk_lines=1000))
    await buffer.open()
    await buffer.register_sinks([SINK])
    await buffer.append(old, 1, 1)
    async with scripted(handler) as url:
        config = sink_config(url, "db", retry_max=0.1)
        stats = GatewayStats()
        forwarder = Forwarder(InfluxDB1Sink(config), config, buffer, asyncio.Event(), stats)
        task = asyncio.create_task(forwarder.run())
        try:
            await poll_until(first_refused.is_set)
            await buffer.append(new, 2, 2)  # evicts the old chunk while the retry waits
            assert (await buffer.stats()).dropped_full_total == len(old)
            await poll_until(lambda: stats.sink(SINK).sent_lines == len(new))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert received == new  # the evicted lines were not sent from memory
    await buffer.close()


async def test_an_outage_is_logged_once_however_its_text_varies(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A store going down first resets the kept-alive connection, then refuses new ones:
    two texts for one outage, and CI saw two ERROR lines where "logged once, repeats
    counted" was promised. The sink's state is what is logged once; the latest text is in
    the stats."""
    answers = iter([(503, "reset"), (502, "refused"), (503, "refused again")])

    def handler(request: web.Request, body: bytes) -> web.Response:
        status, text = next(answers, (204, ""))
        return web.Response(status=status, text=text)

    caplog.set_level(logging.INFO, logger="iotgw.forwarder")
    async with scripted(handler) as url, \
            forwarding(tmp_path, url, [b"m v=1 1"], retry_max=0.1) as (_buffer, sink_stats):
        await poll_until(lambda: sink_stats.sent_lines == 1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "HTTP 503: reset" in errors[0], errors
    assert sink_stats.errors == 3
    assert any("delivering again" in r.getMessage() for r in caplog.records)
