"""Hostile posts against a real gateway: fuzzed requests (hypothesis, fixed seed; the long
run is behind the soak marker), wrong tokens, oversized and truncated bodies, slow
clients. The server must answer or close every one, never crash, never store what it
refused, and keep serving the well-behaved devices meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.camera_push import sim
from drivers.camera_push.tests.harness import GatewayThread, config_text, wait_until

CASES = Path(__file__).resolve().parent.parent / "testcases"
LIMITS = """\
http: {listen: '127.0.0.1:PORT', max_body: 64KiB, read_timeout: 300ms, header_timeout: 300ms,
       max_connections: 64, max_connections_per_source: 8}
devices:
  - {id: term, driver: camera_push, profile: hikvision-isapi, token: tk}
  - {id: cam, driver: camera_push, profile: vzenith-plate, token: tc, sources: [127.0.0.1]}
  - id: json
    driver: camera_push
    profile: generic-json
    token: tj
    mapping: {measurement: hostile_generic, fields: {v: $.v}, event_id: $.id}
"""


@pytest.fixture(scope="module")
def hostile_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    path, port = config_text(tmp_path_factory.mktemp("hostile"), LIMITS)
    with GatewayThread(path, port) as gw:
        yield gw


def receiver_of(gw: GatewayThread) -> Any:
    return gw.gateway.resources._items[("http", "receiver")][0]


def exchange(port: int, data: bytes, half_close: bool) -> bytes:
    """Send, then read until the server closes. The socket timeout is a hang guard: the
    server must answer or close within its own limits (300 ms here)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        out = []
        try:
            while chunk := s.recv(65536):
                out.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(out)


PATHS = st.sampled_from(["/push/term/tk", "/push/cam/tc", "/push/json/tj", "/push/term/TK",
                         "/push/term/", "/push/../term/tk", "/push/term/tk/extra", "/",
                         "/push/%74erm/tk", "/push/" + "a" * 300 + "/tk", "*", "/push/cam/tc?x=1"])
METHODS = st.sampled_from(["POST", "GET", "PUT", "post", "P\x00ST", "POST POST"])
CONTENT_TYPES = st.sampled_from([
    "application/json", "application/xml", "multipart/form-data; boundary=MIME_boundary",
    "multipart/form-data; boundary=" + "b" * 300, "text/plain", "", "image/jpeg"])
SEEDS = [p.read_bytes() for p in sorted(CASES.glob("*/body.bin"))]
BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda seed, cut, junk: seed[:cut] + junk + seed[cut + len(junk):],
              st.sampled_from(SEEDS), st.integers(0, 3000), st.binary(max_size=20)),
    st.builds(lambda v: json.dumps({"v": v, "id": v}).encode(),
              st.integers() | st.text(max_size=10) | st.floats()))


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    body = draw(BODIES)
    headers = ["Host: gw", f"Content-Type: {draw(CONTENT_TYPES)}"]
    framing = draw(st.sampled_from(["length", "none", "chunked", "lie-short", "lie-long",
                                    "bad-length", "huge-length"]))
    if framing == "length":
        headers.append(f"Content-Length: {len(body)}")
    elif framing == "lie-short":
        headers.append(f"Content-Length: {max(0, len(body) - 5)}")
    elif framing == "lie-long":
        headers.append(f"Content-Length: {len(body) + 50}")
    elif framing == "bad-length":
        headers.append(draw(st.sampled_from(["Content-Length: -1", "Content-Length: abc",
                                             "Content-Length: 1, 2", "Content-Length: 0x10"])))
    elif framing == "huge-length":
        headers.append("Content-Length: 99999999999999999999")
    elif framing == "chunked":
        headers.append("Transfer-Encoding: chunked")
        size = draw(st.sampled_from([f"{len(body):x}", "zz", "-1", "ffffffffffffffff"]))
        body = f"{size}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    headers += draw(st.lists(st.sampled_from([
        "Expect: 100-continue", "Content-Encoding: gzip", "Connection: keep-alive",
        "X-Long: " + "x" * 9000, "Bad Header", "Transfer-Encoding: identity",
        "Content-Type: application/json"]), max_size=2))
    head = f"{draw(METHODS)} {draw(PATHS)} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in headers)
    data = head.encode("latin-1", "replace") + b"\r\n" + body
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return data, draw(st.booleans())


def _check_alive(gw: GatewayThread) -> None:
    receiver = receiver_of(gw)
    assert receiver.counters["internal_error"] == 0
    assert receiver.failure is None
    assert gw.gateway.supervisor is not None and not gw.gateway.supervisor.failing


def _hostile(gw: GatewayThread, request: tuple[bytes, bool]) -> None:
    data, half_close = request
    reply = exchange(gw.port, data, half_close)
    if reply:
        # aiohttp answers what its parser refuses itself, as HTTP/1.0
        assert reply.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), reply[:80]
        status = int(reply.split(b" ", 2)[1])
        assert status in (200, 400, 401, 403, 404, 405, 408, 413, 415, 431, 503), reply[:200]
    _check_alive(gw)


@settings(max_examples=80, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(request=hostile_requests())
def test_fuzzed_requests_are_answered_or_closed(hostile_gateway: GatewayThread,
                                                request: tuple[bytes, bool]) -> None:
    _hostile(hostile_gateway, request)


@pytest.mark.soak
@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=hostile_requests())
def test_fuzzed_requests_soak(hostile_gateway: GatewayThread,
                              request: tuple[bytes, bool]) -> None:
    _hostile(hostile_gateway, request)


def test_only_accepted_posts_are_stored(hostile_gateway: GatewayThread) -> None:
    """Runs after the fuzzing (same gateway): every line in the sink is a post that was
    answered 200, and the server still serves a good device."""
    gw = hostile_gateway
    terminal = sim.HikvisionTerminal(gw.port, "term", "tk")
    assert gw.run(terminal.access_json(424242)).status == 200
    wait_until(lambda: any(b"serial=424242i" in x for x in gw.lines()), "good event stored")
    for line in gw.lines():
        assert line.split(b",", 1)[0] in (b"access_event", b"vehicle_event", b"camera_event",
                                          b"hostile_generic"), line


async def _slowloris(port: int, source: str, n: int) -> list[str]:
    """``n`` connections that send a request line and then a header byte every 50 ms;
    returns how each ended (closed by the server, or refused at once)."""

    async def one() -> str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=(source, 0))
        except OSError:
            return "refused"
        try:
            writer.write(b"POST /push/term/tk HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            for _ in range(200):  # 10 s of trickle; the server must cut it far sooner
                await writer.drain()
                if reader.at_eof():
                    return "closed"
                try:
                    async with asyncio.timeout(0.05):
                        if await reader.read(1) == b"":
                            return "closed"
                except TimeoutError:
                    pass
                writer.write(b"a")
            return "survived"
        except (ConnectionError, OSError):
            return "closed"
        finally:
            writer.close()

    return await asyncio.gather(*(one() for _ in range(n)))


def test_slow_clients_do_not_block_other_devices(hostile_gateway: GatewayThread) -> None:
    gw = hostile_gateway
    receiver = receiver_of(gw)
    before = dict(receiver.counters)
    camera = sim.PlateCamera(gw.port, "cam", "tc", retries=0)

    async def scenario() -> tuple[list[str], list[int]]:
        slow = asyncio.ensure_future(_slowloris(gw.port, "127.0.0.3", 40))
        await asyncio.sleep(0.1)
        statuses = []
        for n in range(30):
            reply = await camera.push(camera.event(f"粤B{n:05d}"))
            statuses.append(reply.status)
        return await slow, statuses

    endings, statuses = gw.run(scenario())
    assert statuses == [200] * 30, "a well-behaved camera was held up"
    assert "survived" not in endings, "a slow client kept its connection"
    after = receiver.counters
    assert after["slow_client"] > before.get("slow_client", 0)
    assert after["evicted_idle"] > before.get("evicted_idle", 0)
    wait_until(lambda: len(receiver.server._guards) <= 2, "slow connections released")


def test_a_stalled_body_gets_408_and_the_connection_back(hostile_gateway: GatewayThread) -> None:
    gw = hostile_gateway
    data = sim.request_bytes("/push/term/tk", b"x" * 1000, "application/json")[:-990]
    reply = exchange(gw.port, data, half_close=False)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:60]
    assert gw.counters("term")["read_timeout"] >= 1


def test_bodies_held_in_memory_are_bounded(tmp_path: Path) -> None:
    """Clients that send most of a large body and stall hold memory until read_timeout;
    past ``max_buffered`` further posts get 503 instead of more memory."""
    path, port = config_text(tmp_path, """\
http: {listen: '127.0.0.1:PORT', max_body: 512KiB, max_buffered: 1MiB, read_timeout: 2s}
devices:
  - {id: term, driver: camera_push, profile: hikvision-isapi, token: tk}
""")
    with GatewayThread(path, port) as gw:
        server = receiver_of(gw).server
        full = sim.request_bytes("/push/term/tk", b"<" * 500_000, "application/xml")
        partial = full[:-100_000]  # 400 kB of a 500 kB body, then silence

        async def stall() -> list[bytes]:
            streams = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(partial)
                await writer.drain()
                streams.append((reader, writer))
            replies = []
            for reader, writer in streams:
                replies.append(await reader.read(200))
                writer.close()
            return replies

        replies = gw.run(stall())
        statuses = sorted(int(r.split(b" ", 2)[1]) for r in replies if r)
        assert 503 in statuses and set(statuses) <= {408, 503}, replies
        assert gw.counters("term")["server_busy"] >= 1
        wait_until(lambda: server.buffered == 0, "held bodies released")
        terminal = sim.HikvisionTerminal(port, "term", "tk")
        assert gw.run(terminal.access_json(5)).status == 200
        assert server.buffered == 0


def test_slow_clients_from_many_addresses_do_not_lock_cameras_out(tmp_path: Path) -> None:
    """Found by the outside probe: slow connections from many LAN addresses, each under
    the per-source limit, filled ``max_connections``; every new connection, a camera's
    too, was then closed at once until ``header_timeout`` cut the slow ones, and the slow
    clients simply reconnected. Now the oldest connection that is not handling a
    request makes room for the newcomer."""
    path, port = config_text(tmp_path, """\
http: {listen: '127.0.0.1:PORT', header_timeout: 30s, max_connections: 16,
       max_connections_per_source: 4}
devices:
  - {id: cam, driver: camera_push, profile: vzenith-plate, token: tc, sources: [127.0.0.1]}
""")
    with GatewayThread(path, port) as gw:
        camera = sim.PlateCamera(port, "cam", "tc", retries=0)
        stop = asyncio.Event()

        async def slow(source: str) -> int:
            """Hold a half-sent request open; reconnect whenever closed."""
            opened = 0
            while not stop.is_set():
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, local_addr=(source, 0))
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                opened += 1
                writer.write(b"POST /push/cam/tc HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
                try:
                    while not stop.is_set() and not reader.at_eof():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.1):
                                await reader.read(1)
                except OSError:
                    pass  # closed by the server (aborted): reconnect
                finally:
                    writer.close()
                await asyncio.sleep(0.05)
            return opened

        async def scenario() -> tuple[list[int], list[int]]:
            holders = [asyncio.ensure_future(slow(f"127.0.0.{10 + n // 4}"))
                       for n in range(40)]
            await asyncio.sleep(0.5)  # every slot taken
            statuses = []
            for n in range(10):
                try:
                    statuses.append((await camera.push(camera.event(f"粤C{n:05d}"))).status)
                except OSError:
                    statuses.append(0)
                await asyncio.sleep(0.05)
            stop.set()
            return statuses, await asyncio.gather(*holders)

        statuses, opened = gw.run(scenario())
        assert statuses == [200] * 10, "a camera was locked out by slow clients"
        assert sum(opened) > 16  # the slow clients did fill the table
        assert receiver_of(gw).counters["evicted_idle"] >= 10
