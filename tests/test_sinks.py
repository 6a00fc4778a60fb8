"""Sinks against real servers, plus a scripted HTTP server for the statuses they won't give.

The real VictoriaMetrics and InfluxDB 1.x (fixtures ``victoria`` and ``influx1`` from
tests/support/servers/) prove the bytes land and read back exactly. The in-process aiohttp
server only covers answers a healthy real server cannot be made to give on demand (413,
429, 503 with Retry-After, 401 with a token we can check is not echoed, hangs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from gateway.errors import (
    SinkAuthError,
    SinkPartlyStored,
    SinkRejected,
    SinkTooLarge,
    SinkUnavailable,
)
from gateway.sinks import load_sink_types
from gateway.sinks.file import ROTATED, FileSink, FileSinkConfig
from gateway.sinks.httpcommon import display_url, error_text, parse_retry_after, status_error
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
from gateway.sinks.influxdb1 import InfluxDB1Sink, InfluxDB1SinkConfig
from tests.support.servers import TestCA, free_port
from tests.support.wait import eventually

TOKEN = "tok-SECRET-0123456789"
PASSWORD = "pw-SECRET-9876543210"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def write_once(sink: Any, payload: bytes) -> None:
    await sink.open()
    try:
        await sink.write(payload)
    finally:
        await sink.close()


def influxdb_sink(url: str, **overrides: Any) -> InfluxDBSink:
    settings = {"type": "influxdb", "url": url, "bucket": "iotgw", "token": TOKEN}
    return InfluxDBSink(InfluxDBSinkConfig(**(settings | overrides)))


def influxdb1_sink(url: str, database: str, **overrides: Any) -> InfluxDB1Sink:
    settings = {"type": "influxdb1", "url": url, "database": database}
    return InfluxDB1Sink(InfluxDB1SinkConfig(**(settings | overrides)))


# --- real servers -------------------------------------------------------------------------


@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
async def test_influxdb_sink_writes_to_victoriametrics(victoria: Any, use_gzip: bool) -> None:
    m = unique("sinkvm")
    # Recent timestamps: VictoriaMetrics silently drops (still answering 204) samples
    # older than its retention period, and stores milliseconds.
    t0 = (int(time.time()) - 3600) * 1000 + 123
    t1, t2 = t0 + 1333, t0 + 2666
    payload = (
        f"{m},site=north,meter=m1 power=1.5,energy=42i {t0 * 1_000_000}\n"
        f"{m},site=south,meter=m2 power=-2.25,energy=7i {t1 * 1_000_000}\n"
        f"{m},site=north,meter=m1 power=3.75,energy=43i {t2 * 1_000_000}"
    ).encode()

    await write_once(influxdb_sink(victoria.url, gzip=use_gzip), payload)

    async def probe() -> list[dict]:
        rows = await asyncio.to_thread(victoria.export, f'{{__name__=~"{m}_.*"}}')
        return rows if sum(len(r["values"]) for r in rows) == 6 else []

    rows = await eventually(probe, within=15.0)  # VictoriaMetrics: searchable late
    got = {
        (r["metric"]["__name__"], r["metric"]["site"], r["metric"]["meter"]): sorted(
            zip(r["timestamps"], r["values"], strict=True)
        )
        for r in rows
    }
    assert got == {
        (f"{m}_power", "north", "m1"): [(t0, 1.5), (t2, 3.75)],
        (f"{m}_power", "south", "m2"): [(t1, -2.25)],
        (f"{m}_energy", "north", "m1"): [(t0, 42), (t2, 43)],
        (f"{m}_energy", "south", "m2"): [(t1, 7)],
    }
    assert all(set(r["metric"]) == {"__name__", "site", "meter"} for r in rows)


_WRITE_PATH_ONLY = r"""
import asyncio, json, sys, threading
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
threads = []
async def main():
    sink = InfluxDBSink(InfluxDBSinkConfig(type="influxdb", url=sys.argv[1], bucket="b",
                                           token="t"))
    await sink.open()
    try:
        await sink.write(sys.argv[2].encode())
        threads.extend((t.name, t.daemon) for t in threading.enumerate()
                       if t is not threading.main_thread())
    finally:
        await sink.close()
asyncio.run(main())
print(json.dumps({"modules": sorted(m for m in sys.modules
                                    if m.startswith(("influxdb_client", "aiohttp"))),
                  "threads": threads}))
"""


async def test_influxdb_write_path_is_small(victoria: Any) -> None:
    """In a fresh interpreter (pytest's may hold all of influxdb_client and aiohttp
    already) the sink loads only the client's synchronous write path, no aiohttp at all,
    and still writes, from its own daemon thread: the lazily registered packages
    (gateway/sinks/influxdb.py, _write_path_packages) resolve everything it uses."""
    import json
    import subprocess
    import sys

    m = unique("sinkpath")
    t = (int(time.time()) - 60) * 1_000_000_000
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", _WRITE_PATH_ONLY, victoria.url,
                         f"{m},meter=m1 v=2.5 {t}"],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    modules = loaded["modules"]
    assert "influxdb_client.service.write_service" in modules
    assert "influxdb_client._sync.api_client" in modules  # the synchronous client (urllib3)
    assert not [m for m in modules if m.startswith(("aiohttp", "influxdb_client._async"))]
    assert "influxdb_client.service.query_service" not in modules
    assert len(modules) < 20, modules  # the whole package is ~400
    assert loaded["threads"] == [["sink-influxdb", True]]  # the sink's own, a daemon

    async def probe() -> list[dict]:
        return await asyncio.to_thread(victoria.export, f'{{__name__="{m}_v"}}')

    rows = await eventually(probe)
    assert [r["values"] for r in rows] == [[2.5]]


async def test_line_break_in_a_string_field_loses_nothing_in_victoriametrics(
        victoria: Any) -> None:
    """A raw newline inside a quoted string field is legal line protocol, but
    VictoriaMetrics splits lines first: it dropped the whole reading and answered 204.
    The encoder escapes it (found by tests/test_fuzz_mqtt_profiles.py)."""
    from gateway.lineprotocol import encode_many
    from gateway.reading import Reading

    m = unique("sinknl")
    t0 = (int(time.time()) - 3600) * 10**9
    lines = encode_many([Reading(m, {"meter": "m1"}, {"note": "two\nlines\r", "v": 1.5}, t0),
                         Reading(m, {"meter": "m2"}, {"v": 2.5}, t0)])
    await write_once(influxdb_sink(victoria.url), b"\n".join(lines))

    async def probe() -> list[dict]:
        rows = await asyncio.to_thread(victoria.export, f'{{__name__="{m}_v"}}')
        return rows if len(rows) == 2 else []

    rows = await eventually(probe, within=15.0)  # VictoriaMetrics: searchable late
    assert sorted((r["metric"]["meter"], r["values"]) for r in rows) == [
        ("m1", [1.5]), ("m2", [2.5])]


@pytest.mark.parametrize("kind", ["influxdb", "influxdb1"])
async def test_a_wrong_path_keeps_lines_buffered_instead_of_dropping_them(
        victoria: Any, kind: str) -> None:
    """Found by an outside probe: VictoriaMetrics answers a URL with an extra path with
    400 "unsupported path"; taken as a refusal of lines, every line was dropped."""
    url = f"{victoria.url}/victoria"
    sink = influxdb_sink(url) if kind == "influxdb" else influxdb1_sink(url, "db")
    with pytest.raises(SinkAuthError, match="unsupported path"):
        await write_once(sink, f"{unique('wrongpath')},d=1 v=1 {time.time_ns()}".encode())


def test_short_secrets_do_not_mangle_messages() -> None:
    from gateway.sinks.httpcommon import redact

    assert redact("http://vm/victoria/api/v2/write", ["t"]) == "http://vm/victoria/api/v2/write"
    assert redact("Token s3cret-token refused", ["s3cret-token"]) == "Token *** refused"


@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
async def test_influxdb1_sink_writes_to_influxdb1(influx1: Any, use_gzip: bool) -> None:
    db = unique("sinkdb")
    await asyncio.to_thread(influx1.create_database, db)
    payload = (
        b"meter,site=north power=1.5,energy=42i,"
        b'state="on \\"ok\\"",online=true 1700000000123456789\n'
        b'meter,site=south power=-2.25,energy=7i,state="off",online=false 1700000001000000001'
    )

    await write_once(influxdb1_sink(influx1.url, db, gzip=use_gzip), payload)

    result = await asyncio.to_thread(
        influx1.query, "SELECT power, energy, state, online, site FROM meter ORDER BY time", db
    )
    series = result["results"][0]["series"][0]
    rows = [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]
    assert [(r["power"], r["energy"], r["state"], r["online"], r["site"]) for r in rows] == [
        (1.5, 42, 'on "ok"', True, "north"),
        (-2.25, 7, "off", False, "south"),
    ]
    assert [r["time"] for r in rows] == [1700000000123456789, 1700000001000000001]


async def test_influxdb1_field_type_conflict_is_rejected_with_server_message(influx1: Any) -> None:
    db = unique("sinkdb")
    await asyncio.to_thread(influx1.create_database, db)
    sink = influxdb1_sink(influx1.url, db)
    await sink.open()
    try:
        await sink.write(b"conflict value=1.5 1700000000000000000")
        with pytest.raises(SinkRejected) as caught:
            await sink.write(b'conflict value="text" 1700000001000000000')
    finally:
        await sink.close()
    message = str(caught.value)
    assert "HTTP 400" in message
    assert "field type conflict" in message


async def test_influxdb1_unknown_database_is_auth_error(influx1: Any) -> None:
    sink = influxdb1_sink(influx1.url, unique("missing"))
    with pytest.raises(SinkAuthError, match="database not found"):
        await write_once(sink, b"m value=1 1700000000000000000")


async def test_influxdb1_retention_policy_is_sent(influx1: Any) -> None:
    db = unique("sinkdb")
    await asyncio.to_thread(influx1.create_database, db)
    # 1.x answers 500 here, so it is retried (the data waits until the RP exists).
    with pytest.raises(SinkUnavailable, match="retention policy not found"):
        await write_once(
            influxdb1_sink(influx1.url, db, retention_policy="nope"), b"m v=1 1700000000000000000"
        )
    await write_once(influxdb1_sink(influx1.url, db, retention_policy="autogen"), b"m v=2 1")
    result = await asyncio.to_thread(influx1.query, 'SELECT v FROM "autogen"."m"', db)
    assert result["results"][0]["series"][0]["values"][0][1] == 2


@pytest.mark.parametrize("kind", ["influxdb", "influxdb1"])
async def test_connection_refused_is_unavailable(kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sink = influxdb_sink(url) if kind == "influxdb" else influxdb1_sink(url, "db")
    with pytest.raises(SinkUnavailable) as caught:
        await write_once(sink, b"m v=1 1")
    assert caught.value.retry_after is None
    assert TOKEN not in str(caught.value)


# --- scripted server for statuses real servers will not produce on demand ---------------


@dataclass
class Scripted:
    """An HTTP server that answers every write with whatever the test scripted."""

    url: str = ""
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    hold: asyncio.Event | None = None
    """When set to an event, every answer waits for it (a write that hangs until the test
    lets it go)."""
    redirect: str | None = None
    """A path: requests to other paths are answered 307 with this Location."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0


@contextlib.asynccontextmanager
async def run_scripted(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Scripted]:
    state = Scripted()

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        state.requests.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "raw": raw,
            }
        )
        if state.redirect is not None and request.path != state.redirect:
            return web.Response(status=307, headers={"Location": state.redirect})
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            if state.delay:
                await asyncio.sleep(state.delay)
            if state.hold is not None:
                await state.hold.wait()
        finally:
            state.in_flight -= 1
        return web.Response(status=state.status, headers=state.headers, body=state.body)

    app = web.Application()
    app.router.add_post("/api/v2/write", handle)
    app.router.add_post("/write", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    port = runner.addresses[0][1]
    state.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    async with run_scripted() as state:
        yield state


@pytest.fixture
async def scripted_tls(tls_ca: TestCA) -> AsyncIterator[Scripted]:
    """The same server over HTTPS with a certificate from the session's test CA."""
    cert, key = tls_ca.issue("localhost", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with run_scripted(context) as state:
        yield state


def scripted_sink(kind: str, url: str, **overrides: Any) -> Any:
    if kind == "influxdb":
        return influxdb_sink(url, **overrides)
    return influxdb1_sink(url, "db", username="gw", password=PASSWORD, **overrides)


BOTH = pytest.mark.parametrize("kind", ["influxdb", "influxdb1"])


@BOTH
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, SinkRejected),
        (422, SinkRejected),
        (401, SinkAuthError),
        (403, SinkAuthError),
        (404, SinkAuthError),
        (413, SinkTooLarge),
        (429, SinkUnavailable),
        (500, SinkUnavailable),
        (502, SinkUnavailable),
        (503, SinkUnavailable),
        (418, SinkUnavailable),
    ],
)
async def test_status_classification(
    scripted: Scripted, kind: str, status: int, error: type
) -> None:
    scripted.status = status
    secret = TOKEN if kind == "influxdb" else PASSWORD
    scripted.body = (f'{{"error": "unable to parse line: echo {secret} for status '
                     f'{status}"}}').encode()
    with pytest.raises(error) as caught:
        await write_once(scripted_sink(kind, scripted.url), b"m v=1 1")
    assert type(caught.value) is error
    message = str(caught.value)
    assert f"HTTP {status}" in message
    assert f"for status {status}" in message
    assert secret not in message


NGINX_400 = (b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port"
             b"</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
             b"</body>\r\n</html>\r\n")


@pytest.mark.parametrize(
    ("status", "body", "error", "refused"),
    [
        # not about lines: the data stays buffered (an outside probe lost every reading)
        (400, NGINX_400, SinkAuthError, None),
        (400, b"The plain HTTP request was sent to HTTPS port", SinkAuthError, None),
        (400, b"", SinkAuthError, None),
        (400, b"Bad Request", SinkAuthError, None),
        (400, b"unsupported path requested: /foo/api/v2/write", SinkAuthError, None),
        # what a proxy or the server says about itself, found by an outside probe to
        # match single words inside others ("point" in "endpoint", "line" in "deadline")
        (400, b"400 Bad Request: malformed MIME header line: foo", SinkAuthError, None),
        (400, b"invalid endpoint", SinkAuthError, None),
        (400, b"write endpoint is disabled on this node", SinkAuthError, None),
        (400, b"context deadline exceeded", SinkAuthError, None),
        (400, b"node is offline, try later", SinkAuthError, None),
        (400, b"Request Header Fields Too Large", SinkAuthError, None),
        (400, b"write to staging bucket not allowed", SinkAuthError, None),
        (400, b'{"error":"retention policy not found: autogn"}', SinkAuthError, None),
        (400, b"cannot parse request header", SinkAuthError, None),
        # refusals of lines that stored nothing: bisected
        (400, b'{"code":"invalid","message":"unable to parse \'m v=\': missing field value"}',
         SinkRejected, None),
        (400, b"cannot parse line protocol", SinkRejected, None),
        (400, b'{"error":"parsing failed for write_lp endpoint"}', SinkRejected, None),
        (400, b"invalid field value for f0", SinkRejected, None),
        (400, b"tag key too long", SinkRejected, None),
        # InfluxDB's partial writes: the rest is stored
        (400, b'{"error":"partial write: field type conflict: input field \\"v\\" on '
              b'measurement \\"m\\" is type string, already exists as type float dropped=3"}',
         SinkPartlyStored, 3),
        (400, b'{"error":"partial write: unable to parse \'a b\': invalid field format\n'
              b'unable to parse \'c d\': invalid field format dropped=0"}',
         SinkPartlyStored, 2),
        (422, b'{"code":"unprocessable entity","message":"failure writing points to database: '
              b'partial write: points beyond retention policy dropped=5"}',
         SinkPartlyStored, 5),
        (400, b'{"error":"partial write of line protocol occurred","data":['
              b'{"original_line":"x","line_number":2,"error_message":"bad"},'
              b'{"original_line":"y","line_number":7,"error_message":"bad"}]}',
         SinkPartlyStored, 2),
        (400, b"partial write has occurred, errors encountered on line(s): line 2: x, "
              b"line 7: y", SinkPartlyStored, 2),
    ],
)
def test_a_400_is_a_refusal_of_lines_only_when_it_says_so(
        status: int, body: bytes, error: type, refused: int | None) -> None:
    found = status_error(status, None, body, where="http://x/write")
    assert type(found) is error, found
    if refused is not None:
        assert isinstance(found, SinkPartlyStored) and found.refused_lines == refused


@BOTH
@pytest.mark.parametrize("status", [200, 201, 204])
async def test_any_2xx_is_success(scripted: Scripted, kind: str, status: int) -> None:
    scripted.status = status
    await write_once(scripted_sink(kind, scripted.url), b"m v=1 1")
    assert len(scripted.requests) == 1


@BOTH
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds(scripted: Scripted, kind: str, status: int) -> None:
    scripted.status = status
    scripted.headers = {"Retry-After": "7"}
    with pytest.raises(SinkUnavailable) as caught:
        await write_once(scripted_sink(kind, scripted.url), b"m v=1 1")
    assert caught.value.retry_after == 7.0


@BOTH
async def test_retry_after_http_date(scripted: Scripted, kind: str) -> None:
    scripted.status = 503
    scripted.headers = {
        "Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    }
    with pytest.raises(SinkUnavailable) as caught:
        await write_once(scripted_sink(kind, scripted.url), b"m v=1 1")
    assert caught.value.retry_after is not None
    assert 80 <= caught.value.retry_after <= 90


@BOTH
async def test_no_retry_after_is_none(scripted: Scripted, kind: str) -> None:
    scripted.status = 503
    with pytest.raises(SinkUnavailable) as caught:
        await write_once(scripted_sink(kind, scripted.url), b"m v=1 1")
    assert caught.value.retry_after is None


@BOTH
async def test_rejected_message_is_truncated(scripted: Scripted, kind: str) -> None:
    scripted.status = 400
    scripted.body = b"unable to parse 'm v=': " + b"x" * 5000
    with pytest.raises(SinkRejected) as caught:
        await write_once(scripted_sink(kind, scripted.url), b"m v= 1")
    message = str(caught.value)
    assert "unable to parse 'm v='" in message
    assert len(message) < 700


@BOTH
async def test_timeout_is_unavailable(scripted: Scripted, kind: str) -> None:
    scripted.delay = 2.0
    started = time.monotonic()
    with pytest.raises(SinkUnavailable):
        await write_once(scripted_sink(kind, scripted.url, timeout="300ms"), b"m v=1 1")
    assert time.monotonic() - started < 1.5


async def test_influxdb_request_shape(scripted: Scripted) -> None:
    payload = b"m,t=a v=1 1700000000000000001\nm,t=b v=2 1700000000000000002"
    await write_once(scripted_sink("influxdb", scripted.url, org="acme"), payload)
    (req,) = scripted.requests
    assert req["path"] == "/api/v2/write"
    assert req["query"] == {"org": "acme", "bucket": "iotgw", "precision": "ns"}
    assert req["headers"]["Authorization"] == f"Token {TOKEN}"
    assert req["headers"]["Content-Encoding"] == "gzip"
    assert req["raw"] == payload  # aiohttp's server gunzipped it: proof it was valid gzip


async def test_influxdb1_request_shape(scripted: Scripted) -> None:
    payload = b"m,t=a v=1 1700000000000000001\nm,t=b v=2 1700000000000000002"
    sink = scripted_sink("influxdb1", scripted.url + "/", retention_policy="week", gzip=True)
    await write_once(sink, payload)
    (req,) = scripted.requests
    assert req["path"] == "/write"
    assert req["query"] == {"db": "db", "rp": "week", "precision": "ns"}
    assert req["headers"]["Authorization"].startswith("Basic ")
    assert PASSWORD not in req["headers"]["Authorization"]  # base64, not plain
    assert req["headers"]["Content-Encoding"] == "gzip"
    assert req["raw"] == payload  # aiohttp's server gunzipped it: proof it was valid gzip


async def test_influxdb1_plain_without_credentials(scripted: Scripted) -> None:
    await write_once(influxdb1_sink(scripted.url, "db"), b"m v=1 1")
    (req,) = scripted.requests
    assert "Authorization" not in req["headers"]
    assert "Content-Encoding" not in req["headers"]
    assert req["raw"] == b"m v=1 1"


@BOTH
async def test_empty_payload_sends_nothing(scripted: Scripted, kind: str) -> None:
    await write_once(scripted_sink(kind, scripted.url), b"")
    assert scripted.requests == []


@BOTH
async def test_tls_with_private_ca(scripted_tls: Scripted, tls_ca: TestCA, kind: str) -> None:
    url = scripted_tls.url
    with pytest.raises(SinkUnavailable, match=r"(?i)certificate"):
        await write_once(scripted_sink(kind, url), b"m v=1 1")  # system CAs only
    assert scripted_tls.requests == []
    await write_once(scripted_sink(kind, url, ca_file=tls_ca.cert_file), b"m v=1 2")
    await write_once(scripted_sink(kind, url, verify_ssl=False), b"m v=1 3")
    assert [r["raw"] for r in scripted_tls.requests] == [b"m v=1 2", b"m v=1 3"]


@BOTH
async def test_an_answer_that_is_not_utf8_is_still_classified(scripted: Scripted,
                                                              kind: str) -> None:
    """A proxy's error page in latin-1, a 2xx with a binary body: influxdb-client's own
    reading decodes every answer as UTF-8 and raises UnicodeDecodeError instead (the
    influxdb sink reads the answer itself, as bytes)."""
    scripted.status = 400
    scripted.body = "unable to parse 'm v=1 1': caf\xe9".encode("latin-1")
    with pytest.raises(SinkRejected, match="unable to parse"):
        await write_once(scripted_sink(kind, scripted.url), b"m v=1 1")
    scripted.status = 200
    scripted.body = b"\xff\xfe\x00binary"
    await write_once(scripted_sink(kind, scripted.url), b"m v=1 2")
    assert [r["raw"] for r in scripted.requests] == [b"m v=1 1", b"m v=1 2"]


async def test_influxdb_client_retries_nothing_behind_the_forwarders_back(
        tls_ca: TestCA) -> None:
    """A failed TLS handshake is one handshake: urllib3's default policy (which
    influxdb-client would use if the sink let it) makes it four, and retries refused
    connections the same way. The forwarder alone retries, with its backoff."""
    cert, key = tls_ca.issue("localhost", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    hellos: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: hellos.append(name)  # every ClientHello
    async with run_scripted(context) as server:
        with pytest.raises(SinkUnavailable, match=r"(?i)certificate verify failed"):
            await write_once(influxdb_sink(server.url), b"m v=1 1")  # system CAs only
        assert server.requests == []
    assert len(hellos) == 1


async def test_influxdb_follows_a_redirect_like_the_async_client_did(
        scripted: Scripted) -> None:
    """aiohttp followed redirects for the async client; urllib3 does for the synchronous
    one (a 307 keeps method and body, and on the same host the token)."""
    scripted.redirect = "/write"
    await write_once(influxdb_sink(scripted.url), b"m v=1 1")
    assert [(r["path"], r["raw"]) for r in scripted.requests] == [
        ("/api/v2/write", b"m v=1 1"), ("/write", b"m v=1 1")]
    assert scripted.requests[1]["headers"]["Authorization"] == f"Token {TOKEN}"


def sink_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"sink-{name}"]


async def test_influxdb_close_hangs_up_on_a_hung_write_and_the_next_write_waits_for_it(
        scripted: Scripted) -> None:
    """The forwarder gives up on a write at a stop (cancels it, after its grace) and
    closes the sink; a blocking call in the sink's thread cannot be cancelled, so close()
    hangs up on its connection: the thread ends (a daemon named after the sink) and no
    write is left sending behind a reopened sink, as the supervisor reopens a restarted
    forwarder's sink. A write after reopening goes out once the old call has returned:
    one write at a time per sink."""
    hold = scripted.hold = asyncio.Event()
    sink = influxdb_sink(scripted.url, timeout="60s", name="hung")
    await sink.open()
    first = asyncio.create_task(sink.write(b"m v=1 1"))
    await eventually(lambda: scripted.in_flight == 1)
    (thread,) = sink_threads("hung")
    assert thread.daemon
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await sink.close()
    await eventually(lambda: not thread.is_alive())  # hung up on while the server holds
    assert not hold.is_set()
    hold.set()
    await eventually(lambda: scripted.in_flight == 0)

    await sink.open()
    await sink.write(b"m v=2 2")
    await sink.close()
    assert [r["raw"] for r in scripted.requests] == [b"m v=1 1", b"m v=2 2"]
    assert scripted.most_in_flight == 1
    await eventually(lambda: not sink_threads("hung"))


async def test_influxdb_close_hangs_up_on_a_hung_tls_write(
        scripted_tls: Scripted, tls_ca: TestCA) -> None:
    """The hang-up shuts a TLS connection's socket down too (under the TLS layer, which
    the reading thread still holds): the thread ends while the server holds the answer."""
    hold = scripted_tls.hold = asyncio.Event()
    sink = influxdb_sink(scripted_tls.url, timeout="60s", name="hung-tls",
                         ca_file=tls_ca.cert_file)
    await sink.open()
    try:
        first = asyncio.create_task(sink.write(b"m v=1 1"))
        await eventually(lambda: scripted_tls.in_flight == 1)
        (thread,) = sink_threads("hung-tls")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await sink.close()
        await eventually(lambda: not thread.is_alive())
        assert not hold.is_set()
    finally:
        hold.set()
        await sink.close()


async def test_influxdb_a_write_waits_for_a_call_the_sink_gave_up_on(
        scripted: Scripted) -> None:
    """Between a given-up write and its thread's return (the hang-up takes effect in the
    thread), the next write waits for the thread, bounded by the sink's timeout: the same
    batch is never sent twice at once from this gateway."""
    hold = scripted.hold = asyncio.Event()
    sink = influxdb_sink(scripted.url, timeout="60s", name="slow")
    await sink.open()
    try:
        gate = threading.Event()
        await sink._thread.call(lambda: None)  # the thread exists
        stuck = asyncio.ensure_future(sink._thread.call(gate.wait))  # a call still running
        second = asyncio.create_task(sink.write(b"m v=2 2"))
        done, _ = await asyncio.wait({second}, timeout=0.5)  # a chance to go out too early
        assert not done and scripted.requests == []
        gate.set()
        await stuck
        hold.set()
        await second
        assert [r["raw"] for r in scripted.requests] == [b"m v=2 2"]
    finally:
        hold.set()
        await sink.close()


@dataclass
class Trickler:
    """Answers 204 byte by byte, a header byte every 50 ms until ``stop`` is set: each
    read returns well within urllib3's read timeout, so only the sink's own bound ends
    the wait. Counts connections, how many were open at once, and those the client hung
    up on."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    hung_up: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 204 No Content\r\nX-Slow: ")
            while not self.stop.is_set():
                if reader.at_eof():  # the client hung up
                    self.hung_up += 1
                    return
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            self.hung_up += 1
        finally:
            self.open_now -= 1
            writer.close()


async def test_influxdb_hangs_up_on_a_write_that_trickles_past_its_timeout() -> None:
    """urllib3 bounds each read, not the whole answer: a server trickling header bytes
    kept the sink's thread in its write for as long as it went on, and every later write
    failed with it. The sink stops waiting after its timeout (plus a grace), reports the
    sink unavailable and hangs up: the thread is free again while the server still
    trickles, and the next write goes out on a new connection."""
    trickler = Trickler()
    server = await asyncio.start_server(trickler.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = influxdb_sink(f"http://127.0.0.1:{port}", timeout="300ms", name="trickled")
    await sink.open()
    try:
        with pytest.raises(SinkUnavailable, match=r"no answer within 1\.3s"):
            await sink.write(b"m v=1 1")
        await eventually(lambda: not sink._thread.busy)  # the server is still trickling
        await eventually(lambda: trickler.hung_up == 1 and trickler.open_now == 0)
        assert not trickler.stop.is_set() and trickler.connections == 1
        with pytest.raises(SinkUnavailable, match=r"no answer within 1\.3s"):
            await sink.write(b"m v=2 2")  # sent again (a new connection), trickled again
        assert trickler.connections == 2
        await eventually(lambda: trickler.hung_up == 2 and trickler.open_now == 0)
        await eventually(lambda: not sink._thread.busy)
        trickler.stop.set()
        await sink.write(b"m v=3 3")  # the server answers at once now
        assert trickler.connections == 3
        assert trickler.most_open == 1
    finally:
        trickler.stop.set()
        await sink.close()
        server.close()


_EXIT_WHILE_A_WRITE_HANGS = r"""
import asyncio, sys
from gateway.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
async def main():
    sink = InfluxDBSink(InfluxDBSinkConfig(type="influxdb", url=sys.argv[1], bucket="b",
                                           timeout="600s"))
    await sink.open()
    write = asyncio.create_task(sink.write(b"m v=1 1"))
    await asyncio.to_thread(sys.stdin.readline)  # the test's server has the request
    write.cancel()  # what the forwarder does at a stop
    await asyncio.gather(write, return_exceptions=True)
    await sink.close()
    print("closed; thread still writing:", sink._thread.busy, flush=True)
    for _ in range(200):  # close hung up on the write: the thread ends on its own
        if not sink._thread.busy:
            break
        await asyncio.sleep(0.05)
    print("later; thread still writing:", sink._thread.busy, flush=True)
asyncio.run(main())
"""


async def test_the_process_exits_while_a_write_hangs() -> None:
    """A write stuck on a server that never answers (sink timeout 600 s) holds up neither
    close() nor the interpreter's exit: close() hangs up on it, so the thread ends, and
    it is a daemon besides. The batch was not acknowledged, so the buffer still has it
    for the next start (at least once)."""
    import subprocess
    import sys

    heads: list[bytes] = []
    arrived = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        arrived.set()
        await reader.read()  # until the client's process is gone
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = subprocess.Popen(  # noqa: ASYNC220 - talked to from a thread below
        [sys.executable, "-c", _EXIT_WHILE_A_WRITE_HANGS, f"http://127.0.0.1:{port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        await eventually(arrived.is_set, within=60)
        out, err = await asyncio.to_thread(proc.communicate, "go\n", 120)  # hang guard
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 0, err
    assert "later; thread still writing: False" in out
    assert heads[0].startswith(b"POST /api/v2/write?")


async def test_influxdb1_basic_auth_against_real_server(influx1_factory: Any) -> None:
    server = influx1_factory(username="gwadmin", password=PASSWORD)
    db = unique("authdb")
    server.create_database(db)
    wrong = influxdb1_sink(server.url, db, username="gwadmin", password="not-it")
    with pytest.raises(SinkAuthError) as caught:
        await write_once(wrong, b"m v=1 1700000000000000000")
    assert "HTTP 401" in str(caught.value) and "not-it" not in str(caught.value)
    anonymous = influxdb1_sink(server.url, db)
    with pytest.raises(SinkAuthError, match="HTTP 401"):
        await write_once(anonymous, b"m v=1 1700000000000000000")
    right = influxdb1_sink(server.url, db, username="gwadmin", password=PASSWORD)
    await write_once(right, b"m v=7 1700000000000000000")
    assert server.select("SELECT v FROM m", db) == [{"time": 1700000000000000000, "v": 7}]


# --- pure helpers and config ------------------------------------------------------------


def test_parse_retry_after() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0
    for bad in (None, "", "soon", "-5", "nan", "inf"):
        assert parse_retry_after(bad, now) is None


def test_display_url_hides_credentials() -> None:
    assert display_url("https://gw:pw@influx:8086/") == "https://influx:8086"
    assert display_url("http://influx:8086/write?u=x") == "http://influx:8086/write"


def test_error_text_prefers_json_message() -> None:
    assert error_text(b'{"error":"field type conflict"}') == "field type conflict"
    assert error_text(b'{"code":"invalid","message":"bad line"}') == "bad line"
    assert error_text(b"plain words\n") == "plain words"
    assert error_text(None) == ""


def test_registry_lists_all_sinks() -> None:
    types = load_sink_types()
    assert {"file", "influxdb", "influxdb1"} <= set(types)
    assert types["influxdb"].config_model is InfluxDBSinkConfig


def test_secrets_from_files_and_never_in_repr(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = InfluxDBSinkConfig(
        type="influxdb", url="http://x:8086", bucket="b", token_file=token_file
    )
    assert config.token is not None and config.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(config)
    with pytest.raises(ValidationError, match="not both"):
        InfluxDBSinkConfig(
            type="influxdb", url="http://x", bucket="b", token=TOKEN, token_file=token_file
        )
    with pytest.raises(ValidationError):
        InfluxDBSinkConfig(type="influxdb", url="influx:8086", bucket="b")
    with pytest.raises(ValidationError, match="username"):
        InfluxDB1SinkConfig(type="influxdb1", url="http://x", database="d", password="p")


async def test_unusable_ca_file_is_auth_error(tmp_path: Path) -> None:
    for sink in (
        influxdb_sink("https://127.0.0.1:1", ca_file=tmp_path / "missing.pem"),
        influxdb1_sink("https://127.0.0.1:1", "db", ca_file=tmp_path / "missing.pem"),
    ):
        with pytest.raises(SinkAuthError, match="ca_file"):
            await sink.open()
        await sink.close()


# --- file sink ----------------------------------------------------------------------------


def file_sink(tmp_path: Path, **settings: Any) -> FileSink:
    return FileSink(FileSinkConfig(**settings), tmp_path)


def rotated(sink: FileSink) -> list[Path]:
    return sink.rotated_files()


async def test_file_sink_appends_exactly_to_default_directory(tmp_path: Path) -> None:
    sink = file_sink(tmp_path)
    await sink.open()
    await sink.write(b"m v=1 1\nm v=2 2")
    await sink.write(b"m v=3 3\n")
    await sink.write(b"")
    await sink.close()
    assert sink.directory == tmp_path / "lines"
    assert (tmp_path / "lines" / "current.lp").read_bytes() == b"m v=1 1\nm v=2 2\nm v=3 3\n"
    assert rotated(sink) == []


async def test_file_sink_rotates_at_size_limit_and_keeps_max_files(tmp_path: Path) -> None:
    sink = file_sink(tmp_path, directory=tmp_path / "out", max_file_size="100", max_files=3)
    await sink.open()
    batches = [f"m,batch={i:02d} value={i}.5,{'x' * 10}=1i {i}".encode() for i in range(20)]
    assert all(30 <= len(b) + 1 < 50 for b in batches)  # two fit in 100 bytes, three do not
    for batch in batches:
        await sink.write(batch)
    await sink.close()

    files = rotated(sink)
    assert len(files) == 3
    assert all(ROTATED.match(p.name) for p in files)
    for path in [*files, sink.directory / "current.lp"]:
        assert 0 < path.stat().st_size <= 100
    kept = b"".join(p.read_bytes() for p in files) + (sink.directory / "current.lp").read_bytes()
    # 20 batches, two per file: 10 files' worth; current holds the last two, so 3 rotated
    # files keep the six before them, and the oldest 12 batches were deleted.
    assert kept == b"".join(b + b"\n" for b in batches[12:])


async def test_file_sink_resumes_size_and_sequence_after_restart(tmp_path: Path) -> None:
    settings = {"directory": tmp_path, "max_file_size": 20, "max_files": 10}
    first = file_sink(tmp_path, **settings)
    await first.open()
    await first.write(b"a" * 9)  # 10 bytes
    await first.write(b"b" * 9)  # 20 bytes: fits exactly
    await first.write(b"c" * 9)  # rotates
    await first.close()
    names_before = [p.name for p in rotated(first)]

    second = file_sink(tmp_path, **settings)
    await second.open()
    await second.write(b"d" * 9)  # current had 10 bytes: fits
    await second.write(b"e" * 9)  # rotates
    await second.close()
    names_after = [p.name for p in rotated(second)]
    assert names_after[: len(names_before)] == names_before
    matches = [ROTATED.match(n) for n in names_after]
    assert [int(m.group(1)) if m else None for m in matches] == [1, 2]
    assert [p.read_bytes() for p in rotated(second)] == [
        b"a" * 9 + b"\n" + b"b" * 9 + b"\n",
        b"c" * 9 + b"\n" + b"d" * 9 + b"\n",
    ]
    assert (tmp_path / "current.lp").read_bytes() == b"e" * 9 + b"\n"


async def test_file_sink_oversized_batch_gets_its_own_file(tmp_path: Path) -> None:
    sink = file_sink(tmp_path, directory=tmp_path, max_file_size=10)
    await sink.open()
    await sink.write(b"small")
    await sink.write(b"x" * 50)
    await sink.write(b"next")
    assert [p.read_bytes() for p in rotated(sink)] == [b"small\n", b"x" * 50 + b"\n"]
    assert (tmp_path / "current.lp").read_bytes() == b"next\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to fake ENOSPC")
async def test_file_sink_disk_full_is_unavailable_then_recovers(tmp_path: Path) -> None:
    sink = file_sink(tmp_path, directory=tmp_path)
    await sink.open()
    current = tmp_path / "current.lp"
    current.symlink_to("/dev/full")
    with pytest.raises(SinkUnavailable, match="No space left"):
        await sink.write(b"m v=1 1")
    current.unlink()  # "the disk was freed"
    await sink.write(b"m v=1 1")
    assert current.read_bytes() == b"m v=1 1\n"


async def test_file_sink_unwritable_directory_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = file_sink(tmp_path, directory=blocker / "lines")
    with pytest.raises(SinkUnavailable):
        await sink.open()
    with pytest.raises(SinkUnavailable):
        await sink.write(b"m v=1 1")


async def answer_then_close(answer: bytes) -> tuple[asyncio.Server, str]:
    """A server that reads one write, sends ``answer`` (a truncated HTTP answer) and hangs
    up, as a crashing server or proxy does."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_influxdb_an_answer_cut_off_in_its_headers_is_not_a_success(
        caplog: pytest.LogCaptureFixture) -> None:
    """A 2xx status line followed by a cut-off header is not an acknowledgement: urllib3
    only logs a warning (with a traceback, at every write) and hands the status on, so the
    sink counted the batch as stored and the buffer dropped it (lost). It must be a
    transport failure (the batch is sent again; the forwarder logs it once)."""
    server, url = await answer_then_close(b"HTTP/1.1 204 No Content\r\nCon")
    try:
        with pytest.raises(SinkUnavailable, match="headers"):
            await write_once(influxdb_sink(url), b"m v=1 1")
    finally:
        server.close()
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]


async def test_influxdb_read_timeouts_read_the_same_every_time() -> None:
    """The forwarder logs a failure once until its message changes; urllib3's read
    timeout message carries the time left of the request's budget (``read
    timeout=1.9997973419999653``), different at every write, so a server that never
    answers was logged at every retry."""
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    messages = set()
    try:
        for value in range(3):
            with pytest.raises(SinkUnavailable) as caught:
                await write_once(influxdb_sink(url, timeout="200ms"), b"m v=%d 1" % value)
            messages.add(str(caught.value))
    finally:
        server.close()
    assert len(messages) == 1, messages


@dataclass
class ErrorBody:
    """Answers every write 500 with a body of ``size`` bytes, sent ``chunk`` bytes every
    ``pause`` seconds; counts what it managed to send and when the client hung up."""

    size: int
    chunk: int
    pause: float = 0.0
    sent: list[int] = field(default_factory=list)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % self.size)
        sent = 0
        try:
            while sent < self.size:
                writer.write(b"E" * self.chunk)
                await writer.drain()
                sent += self.chunk
                if self.pause:
                    await asyncio.sleep(self.pause)
        except (ConnectionError, OSError):
            pass
        finally:
            self.sent.append(sent)
            writer.close()


async def test_influxdb_reads_a_huge_error_body_only_in_part() -> None:
    """influxdb-client reads a non-2xx body whole into memory (and copies it for its
    message): a 300 MiB error page took a probe's gateway from 49 MiB to 2.2 GiB. The sink
    reads a bounded part of it and hangs up on the rest."""
    server_state = ErrorBody(size=256 * 1024 * 1024, chunk=1024 * 1024)
    server = await asyncio.start_server(server_state.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        with pytest.raises(SinkUnavailable, match=r"HTTP 500: E+…$"):
            await write_once(influxdb_sink(url), b"m v=1 1")
        await eventually(lambda: server_state.sent)
    finally:
        server.close()
    assert server_state.sent[0] < server_state.size // 4, server_state.sent


async def test_influxdb_a_trickled_error_body_does_not_hold_the_sink() -> None:
    """An error answer whose body comes a byte at a time kept the sink's thread reading
    it for as long as the server went on (each read is within urllib3's read timeout):
    every later write failed with "the previous write has not returned". The sink reads
    an error body only within the write's timeout, so the next write goes out."""
    server_state = ErrorBody(size=100_000, chunk=1, pause=0.05)
    server = await asyncio.start_server(server_state.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sink = influxdb_sink(url, timeout="300ms")
    await sink.open()
    try:
        for value in range(2):
            with pytest.raises(SinkUnavailable, match="HTTP 500"):
                await sink.write(b"m v=%d 1" % value)
        assert server_state.connections == 2
    finally:
        await sink.close()
        server.close()


async def test_influxdb_a_refused_connection_is_not_a_silent_server() -> None:
    """urllib3 2.x makes NewConnectionError a TimeoutError subclass, so a refused
    connection was reported as "no answer within 10s"."""
    sink = influxdb_sink(f"http://127.0.0.1:{free_port()}", timeout="10s")
    with pytest.raises(SinkUnavailable) as caught:
        await write_once(sink, b"m v=1 1")
    assert "Connection refused" in str(caught.value)
    assert "no answer within" not in str(caught.value)
