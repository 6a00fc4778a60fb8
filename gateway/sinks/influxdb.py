"""InfluxDB 2.x/3.x (and VictoriaMetrics) sink: the only module that imports influxdb_client.

Writes through influxdb-client's synchronous client (``ApiClient`` + ``WriteService``
over urllib3) against ``/api/v2/write``, in the sink's own thread
(``gateway.sinks.worker``): the client's async API runs on aiohttp, which costs ~9 MiB
of a Pi's memory for one POST at a time. VictoriaMetrics accepts the same endpoint and
ignores org, bucket and token, so one sink type covers all three.

How influxdb-client 1.x's synchronous ``post_write`` reports outcomes (read from its
source, ``_sync/rest.py`` and ``_sync/api_client.py``, because its docs only say "None"):

* any non-2xx answer raises ``influxdb_client.rest.ApiException`` with ``.status``,
  ``.headers`` (urllib3's case-insensitive ``HTTPHeaderDict``) and ``.body`` (raw bytes,
  because this sink asks for the response unread, ``_preload_content=False``: the
  client's own reading decodes the body as UTF-8 and raises ``UnicodeDecodeError`` for
  anything else, a proxy's latin-1 error page or a 2xx with a binary body);
* network failures escape as urllib3 exceptions: ``NewConnectionError`` (refused, DNS),
  ``ConnectTimeoutError``, ``ReadTimeoutError``, ``ProtocolError`` (reset, closed
  mid-answer) as themselves; what urllib3 counts as "other", a TLS failure above all, as
  ``MaxRetryError`` with the cause as ``.reason`` (the per-request ``Retry`` below allows
  none of them). Without that ``Retry`` the client catches urllib3's ``SSLError`` itself
  and raises ``ApiException`` with status 0 and the error's text as ``.reason``: mapped
  as a network failure too;
* any 2xx (a proxy may answer 200 instead of 204) means the server took the data; the
  answer's body, like an error's, is read by :func:`_bounded_answer` (at most
  ``ANSWER_BODY_LIMIT`` bytes within the timeout) before the client sees it.

urllib3 retries nothing behind the forwarder's back: the client builds its pool with
``retries=False`` (its ``ApiClient`` default, passed explicitly here), and each request
passes a ``Retry`` that retries no failure (connect, read, status or other) and follows
up to ``MAX_REDIRECTS`` redirects, as aiohttp did for the async client. The forwarder
alone decides when to send again, with its backoff and the server's Retry-After.

Two choices made for a Pi's budget:

* gzip is done here at level 1, not by the client (``enable_gzip`` compresses at level 9:
  11.4 µs per line against 0.8 µs, for output 7.2x instead of 5.8x smaller), in the
  sink's thread (zlib releases the GIL; the event loop never compresses). The body goes
  through the client's public ``WriteService`` with ``content_encoding="gzip"``.
* influxdb_client is imported when a sink of this type opens, not when the config is
  validated, so gateways without it do not pay for it; and then only its write path
  (``ApiClient`` + ``WriteService``, ~1.5 MiB with urllib3) instead of the whole generated
  API (~400 modules, ~13 MiB): see :func:`_write_path_packages`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import re
import socket
import sys
import threading
import time
import warnings
import zlib
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from gateway.config.types import SecretsModel, secret_value
from gateway.errors import SinkUnavailable
from gateway.sinks import register_sink
from gateway.sinks.base import SinkConfigBase
from gateway.sinks.httpcommon import (
    display_url,
    make_ssl_context,
    redact,
    status_error,
    transport_error,
)
from gateway.sinks.worker import SinkThread
from gateway.urls import SinkUrl, userinfo

log = logging.getLogger("iotgw.sinks.influxdb")

GZIP_LEVEL = 1

MAX_REDIRECTS = 10
"""Redirects followed per write (aiohttp's default, which the async client used)."""

ANSWER_GRACE = 1.0
"""Seconds the sink waits for its thread beyond the configured timeout. urllib3 enforces
the timeout itself (connect plus each read) and answers with a clearer error; this bound
only catches a server that keeps a read alive by trickling bytes."""

ANSWER_BODY_LIMIT = 64 * 1024
"""Most of an answer's body the sink reads: the client would read an error page whole
into memory (and copy it for its message), and the forwarder logs 500 characters of it."""

CLOSE_WAIT = 1.0
"""Longest ``close`` waits for the thread to end (``timeout`` when that is shorter). An
idle thread ends at once after closing its connections; a write still under way is not
waited for (the forwarder already gave it ``STOP_GRACE`` at a stop): it finishes or dies
with the process, and its batch, not acknowledged, is sent again."""


_LAZY_PACKAGES = ("influxdb_client", "influxdb_client.client", "influxdb_client.domain",
                  "influxdb_client.service")
"""influxdb_client's packages whose ``__init__`` imports every generated service and
domain model (~400 modules, ~12 MiB); see :func:`_write_path_packages`."""


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _lazy_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__``.

    Its submodules import as usual. A name taken from the package (``from
    influxdb_client import SigninService``) is looked up as the module named after it in
    snake case (``influxdb_client.service.signin_service``), which is where the generated
    code defines each class; a name found nowhere runs the real ``__init__`` after all, so
    nothing is ever missing, it is only loaded later."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(name)
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    loaded = False

    def __getattr__(attr: str) -> Any:
        nonlocal loaded
        if attr.startswith("__"):
            raise AttributeError(attr)
        for package in (name, *_LAZY_PACKAGES):
            try:
                sub = importlib.import_module(f"{package}.{_snake(attr)}")
            except ImportError:
                continue
            if hasattr(sub, attr):
                value = getattr(sub, attr)
                setattr(module, attr, value)
                return value
        if not loaded:
            loaded = True
            loader.exec_module(module)  # the package as published, all of it
            return getattr(module, attr)
        raise AttributeError(f"module {name!r} has no attribute {attr!r}")

    module.__dict__["__getattr__"] = __getattr__  # PEP 562
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _write_path_packages() -> None:
    """Make importing influxdb_client's write path cost ~1.5 MiB instead of ~13.

    The client's package ``__init__`` files import all ~40 generated services and ~350
    domain models; the write path (``ApiClient``, ``Configuration``, ``WriteService``,
    the exceptions) needs five modules of them. Registering those packages without running
    their ``__init__`` (:func:`_lazy_package`) leaves the library's own code untouched and
    is skipped when something already imported the package (then it is simply the real
    one). The version pin (influxdb-client 1.x) and tests/test_sinks.py's write tests keep
    this honest; ``tests/test_sinks.py::test_influxdb_write_path_is_small`` checks what
    gets loaded."""
    if "influxdb_client" in sys.modules:
        return
    for name in _LAZY_PACKAGES:
        _lazy_package(name)


@cache
def _client_library() -> SimpleNamespace:
    """influxdb_client's synchronous write path, imported on first use."""
    _write_path_packages()
    from influxdb_client._sync.api_client import ApiClient
    from influxdb_client.client.exceptions import InfluxDBError
    from influxdb_client.configuration import Configuration
    from influxdb_client.rest import ApiException
    from influxdb_client.service.write_service import WriteService
    from urllib3 import HTTPConnectionPool, HTTPResponse, HTTPSConnectionPool
    from urllib3.exceptions import (
        HeaderParsingError,
        HTTPError,
        InsecureRequestWarning,
        MaxRetryError,
        NewConnectionError,
    )
    from urllib3.exceptions import TimeoutError as Urllib3Timeout
    from urllib3.util.response import assert_header_parsing
    from urllib3.util.retry import Retry

    # urllib3 logs a cut-off header as a warning with a traceback, at every write, and
    # carries on; the sink reports it itself (_check_headers), through the forwarder.
    logging.getLogger("urllib3.connection").addFilter(_not_header_parsing)
    return SimpleNamespace(InfluxDBError=InfluxDBError, ApiClient=ApiClient,
                           Configuration=Configuration, ApiException=ApiException,
                           WriteService=WriteService, HTTPError=HTTPError,
                           InsecureRequestWarning=InsecureRequestWarning,
                           MaxRetryError=MaxRetryError, Retry=Retry,
                           NewConnectionError=NewConnectionError,
                           Timeout=Urllib3Timeout, HeaderParsingError=HeaderParsingError,
                           assert_header_parsing=assert_header_parsing,
                           HTTPResponse=HTTPResponse, HTTPConnectionPool=HTTPConnectionPool,
                           HTTPSConnectionPool=HTTPSConnectionPool)


def _not_header_parsing(record: logging.LogRecord) -> bool:
    """Drop urllib3's "Failed to parse headers" warning (see _client_library)."""
    return not str(record.msg).startswith("Failed to parse headers")


def gzip_body(payload: bytes) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip container
    return compressor.compress(payload) + compressor.flush()


class InfluxDBSinkConfig(SinkConfigBase, SecretsModel):
    """An InfluxDB 2.x/3.x or VictoriaMetrics server, written through ``/api/v2/write``."""

    secret_fields = ("token",)

    type: Literal["influxdb"]
    url: SinkUrl = Field(description="e.g. http://influx:8086")
    org: str = Field(default="-", min_length=1, description="ignored by InfluxDB 3 and VM")
    bucket: str = Field(min_length=1, description="bucket (2.x), database (3.x), any (VM)")
    token: SecretStr | None = None
    token_file: Path | None = None
    gzip: bool = True
    verify_ssl: bool = True
    ca_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _no_url_credentials(cls, url: str) -> str:
        if userinfo(url) is not None:
            raise ValueError("the influxdb sink takes credentials as token or token_file, not "
                             "as user:password@ in the url")
        return url


class InfluxDBSink:
    """Writes line-protocol batches with influxdb-client's synchronous API in the sink's
    own thread, one at a time; never retries."""

    def __init__(self, config: InfluxDBSinkConfig, data_dir: Path | None = None) -> None:
        self.name = config.sink_name
        self._config = config
        self._token = secret_value(config.token)
        self._where = f"{display_url(config.url)}/api/v2/write"
        self._thread = SinkThread(f"sink-{self.name}")
        self._sockets = OpenSockets()
        self._client: Any = None
        self._write_service: Any = None
        self._lib: SimpleNamespace | None = None

    async def open(self) -> None:
        """Build the client (no I/O: urllib3 connects on the first write)."""
        if self._client is not None:
            return
        cfg = self._config
        # The TLS settings of every HTTP sink, and our error for an unusable CA file
        # instead of the client's raw OSError.
        context = make_ssl_context(cfg.verify_ssl, cfg.ca_file)
        lib = self._lib = _client_library()
        if not cfg.verify_ssl:  # the installer chose it; urllib3 would warn on every write
            warnings.filterwarnings("ignore", category=lib.InsecureRequestWarning)
        # What InfluxDBClient(url, token, org, timeout, verify_ssl, ssl_ca_cert) sets up,
        # from the client's own lower-level classes: the high-level class imports the
        # query, delete and dataframe machinery too (see _write_path_packages).
        conf = lib.Configuration()
        conf.host = cfg.url.rstrip("/")
        conf.verify_ssl = cfg.verify_ssl
        conf.ssl_context = context
        conf.timeout = int(cfg.timeout * 1000)  # milliseconds: urllib3's total per request
        conf.connection_pool_maxsize = 1  # one write at a time
        conf.username = conf.password = None  # no user session (signin/signout) either
        self._client = lib.ApiClient(
            configuration=conf,
            header_name="Authorization" if self._token else None,
            header_value=f"Token {self._token}" if self._token else None,
            retries=False)
        pool = self._client.rest_client.pool_manager
        pool.request = partial(_bounded_answer, lib, pool.request, cfg.timeout)
        pool.pool_classes_by_scheme = _tracking_pools(lib, self._sockets)
        self._write_service = lib.WriteService(self._client)

    async def write(self, payload: bytes) -> None:
        if not payload.strip():
            return
        if self._write_service is None:
            raise RuntimeError(f"{self._where}: write() before open()")
        service = self._write_service
        limit = self._config.timeout + ANSWER_GRACE
        bound = asyncio.timeout(limit)
        sent = False
        try:
            async with bound:
                await self._thread.idle()  # a write given up earlier may still be running
                sent = True
                await self._thread.call(partial(self._post, service, payload))
        except TimeoutError:
            if not bound.expired():
                raise
            if sent:  # urllib3 would read on for as long as the server trickles bytes
                self._sockets.hang_up()
            what = "no answer" if sent else "the previous write (given up earlier) has not returned"
            raise SinkUnavailable(f"{self._where}: {what} within {limit:g}s") from None

    def _post(self, service: Any, payload: bytes) -> None:
        """One write, in the sink's thread: compress, POST, map the outcome."""
        lib = self._lib
        assert lib is not None
        secrets = (self._token,)
        encoding: dict[str, str] = {}
        body = payload
        if self._config.gzip:
            body = gzip_body(payload)
            encoding["content_encoding"] = "gzip"
        try:
            response = service.post_write(
                org=self._config.org,
                bucket=self._config.bucket,
                body=body,
                precision="ns",
                content_type="text/plain; charset=utf-8",
                _preload_content=False,
                urlopen_kw={"retries": _no_retries(lib)},
                **encoding,
            )
        except lib.ApiException as exc:
            if not exc.status:  # no HTTP answer: the client wraps TLS failures this way
                reason = " ".join(str(exc.reason or "no response").split())
                raise SinkUnavailable(redact(f"{self._where}: {reason}", secrets)) from exc
            error = status_error(
                exc.status, exc.headers, exc.body, where=self._where, secrets=secrets)
            if error is not None:
                raise error from exc
            return
        except lib.MaxRetryError as exc:  # what urllib3 counts as "other" (TLS): the cause
            raise transport_error(exc.reason or exc, where=self._where,
                                  secrets=secrets) from exc
        except lib.NewConnectionError as exc:  # a TimeoutError subclass in urllib3 2.x,
            # but a refused or unreachable connection, not a silent server
            raise transport_error(exc, where=self._where, secrets=secrets) from exc
        except lib.Timeout as exc:
            # urllib3's text carries the time left of the request's budget, different at
            # every write, and the forwarder logs a failure again when its text changes.
            raise SinkUnavailable(
                f"{self._where}: {type(exc).__name__}: no answer within "
                f"{self._config.timeout:g}s") from exc
        except (lib.HTTPError, OSError) as exc:
            raise transport_error(exc, where=self._where, secrets=secrets) from exc
        except lib.InfluxDBError as exc:  # client-side trouble without an HTTP answer
            raise SinkUnavailable(redact(f"{self._where}: {exc.message}", secrets)) from exc
        _check_headers(lib, response, self._where)  # 2xx: stored (its body was read)

    async def close(self) -> None:
        if self._client is None:
            return
        client, self._client, self._write_service = self._client, None, None
        wait = min(self._config.timeout, CLOSE_WAIT)
        if self._thread.busy:  # a write the forwarder gave up on at a stop or a reload
            self._sockets.hang_up()
        if not await self._thread.stop(partial(_dispose, client), wait):
            log.debug("sink %s: closed while a write is still under way in thread %s; "
                      "its batch is sent again unless it finishes", self.name,
                      self._thread.name)


def _no_retries(lib: SimpleNamespace) -> Any:
    """urllib3's policy for one write: no failure retried (connect, read, status, other:
    the forwarder decides), redirects followed as aiohttp followed them."""
    return lib.Retry(total=None, connect=False, read=False, status=0, other=0,
                     redirect=MAX_REDIRECTS, raise_on_redirect=False,
                     respect_retry_after_header=False)


def _bounded_answer(lib: SimpleNamespace, request: Any, budget: float, *args: Any,
                    **kwargs: Any) -> Any:
    """``PoolManager.request`` with the answer's body read here, bounded in size
    (``ANSWER_BODY_LIMIT``) and time (what is left of ``budget``, the sink's timeout),
    then the connection released (or closed, when the body was cut short).

    influxdb-client reads an error answer's body whole, without bound: a huge error page
    went into memory several times over, and one trickled a byte at a time kept the
    sink's thread reading for as long as the server went on (urllib3 bounds each read,
    not the answer), every later write failing. What the client gets instead is an
    answer holding the part read (a 2xx's body is of no interest)."""
    deadline = time.monotonic() + budget
    response = request(*args, **kwargs)
    parts: list[bytes] = []
    size = 0
    complete = False
    read = getattr(response, "read1", None) or response.read  # read1: urllib3 2.x
    try:
        while size < ANSWER_BODY_LIMIT and time.monotonic() < deadline:
            part = read(min(ANSWER_BODY_LIMIT - size, 16 * 1024))
            if not part:
                complete = True
                break
            parts.append(part)
            size += len(part)
    finally:
        if not complete:
            response.close()  # the rest of the body is not wanted: hang up on it
        response.release_conn()
    return lib.HTTPResponse(body=b"".join(parts), headers=response.headers,
                            status=response.status, reason=response.reason,
                            version=response.version, preload_content=False,
                            original_response=getattr(response, "_original_response", None))


def _check_headers(lib: SimpleNamespace, response: Any, where: str) -> None:
    """Raise SinkUnavailable when a 2xx answer's headers were cut off or garbled.

    urllib3 only logs this and hands the status on; a server or proxy that hangs up in
    the middle of its answer has not acknowledged anything, and counting the batch as
    stored would drop it from the buffer. Sending it again is harmless (idempotent)."""
    original = getattr(response, "_original_response", None)  # http.client's response
    if original is None:
        return
    try:
        lib.assert_header_parsing(original.msg)
    except (lib.HeaderParsingError, TypeError) as exc:
        raise SinkUnavailable(f"{where}: HTTP {response.status} answer with broken headers "
                              f"(cut off?): {type(exc).__name__}") from exc


class OpenSockets:
    """The sockets of a sink's open connections, so that the event loop's thread can hang
    up on a write the sink has given up on. urllib3 bounds each read, not the answer: a
    server or middlebox trickling a header byte a second held the sink's thread (and
    with it every later write) for as long as it went on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def discard(self, sock: socket.socket | None) -> None:
        if sock is None:  # a connection closed before it connected
            return
        with self._lock:
            self._open.discard(sock)

    def hang_up(self) -> int:
        """Shut every open connection down; the blocked read in the sink's thread then
        ends with a connection error. Returns how many were shut."""
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            # socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown
            # would drop the TLS state under the reading thread's feet.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        return len(sockets)


def _tracking_pools(lib: SimpleNamespace, sockets: OpenSockets) -> dict[str, type]:
    """urllib3 pool classes (for ``PoolManager.pool_classes_by_scheme``) whose connections
    enter their socket in ``sockets`` when they connect and leave it when they close."""
    return {"http": _tracking_pool(lib.HTTPConnectionPool, sockets),
            "https": _tracking_pool(lib.HTTPSConnectionPool, sockets)}


def _tracking_pool(pool: Any, sockets: OpenSockets) -> type:
    base = pool.ConnectionCls

    def connect(self: Any) -> None:
        base.connect(self)
        sockets.add(self.sock)

    def close(self: Any) -> None:
        sock = self.sock
        base.close(self)
        sockets.discard(sock)

    connection = type(f"Tracking{base.__name__}", (base,),
                      {"connect": connect, "close": close})
    return type(f"Tracking{pool.__name__}", (pool,), {"ConnectionCls": connection})


def _dispose(client: Any) -> None:
    """Close the client's pooled connections (in the sink's thread, after its last write)."""
    client.rest_client.pool_manager.clear()


register_sink("influxdb", InfluxDBSinkConfig, InfluxDBSink)
