"""InfluxDB 2.x/3.x (and VictoriaMetrics) sink: the only module that imports influxdb_client.

Uses the client's async write API against ``/api/v2/write``. VictoriaMetrics accepts the
same endpoint and ignores org, bucket and token, so one sink type covers all three.

How influxdb-client 1.x's ``WriteApiAsync.write`` reports outcomes (read from its source,
because its docs only say "True ... otherwise raise"):

* any non-2xx answer raises ``influxdb_client.rest.ApiException`` with ``.status``,
  ``.headers`` (aiohttp's CIMultiDictProxy) and ``.body`` (raw bytes);
* network failures and timeouts escape unwrapped as aiohttp / ``TimeoutError`` exceptions;
* any 2xx (a proxy may answer 200 instead of 204) means the server took the data.

Two choices made for a Pi's budget:

* gzip is done here at level 1, not by the client (``enable_gzip`` compresses at level 9
  on the event loop: 11.4 µs per line against 0.8 µs, for output 7.2x instead of 5.8x
  smaller). The body goes through the client's public ``WriteService`` with
  ``content_encoding="gzip"``.
* influxdb_client is imported when a sink of this type opens, not when the config is
  validated, so gateways without it do not pay for it; and then only its write path
  (``ApiClientAsync`` + ``WriteService``, ~1.5 MiB) instead of the whole generated API
  (~400 modules, ~13 MiB): see :func:`_write_path_packages`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import sys
import zlib
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from gateway.config.types import SecretsModel, secret_value
from gateway.errors import SinkUnavailable
from gateway.sinks import register_sink
from gateway.sinks.base import SinkConfigBase
from gateway.sinks.http import TRANSPORT_ERRORS
from gateway.sinks.httpcommon import (
    display_url,
    make_ssl_context,
    status_error,
    transport_error,
)
from gateway.urls import SinkUrl, userinfo

GZIP_LEVEL = 1
GZIP_IN_THREAD = 256 * 1024
"""Bodies larger than this are compressed in a worker thread (zlib releases the GIL)."""


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
    domain models; the write path (``ApiClientAsync``, ``Configuration``, ``WriteService``,
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
    """influxdb_client's write path, imported on first use."""
    _write_path_packages()
    from influxdb_client._async.api_client import ApiClientAsync
    from influxdb_client.client.exceptions import InfluxDBError
    from influxdb_client.configuration import Configuration
    from influxdb_client.rest import ApiException
    from influxdb_client.service.write_service import WriteService

    return SimpleNamespace(InfluxDBError=InfluxDBError, ApiClientAsync=ApiClientAsync,
                           Configuration=Configuration, ApiException=ApiException,
                           WriteService=WriteService)


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
    """Writes line-protocol batches with influxdb-client's async API; never retries."""

    def __init__(self, config: InfluxDBSinkConfig, data_dir: Path | None = None) -> None:
        self.name = config.sink_name
        self._config = config
        self._token = secret_value(config.token)
        self._where = f"{display_url(config.url)}/api/v2/write"
        self._client: Any = None
        self._write_service: Any = None
        self._lib: SimpleNamespace | None = None

    async def open(self) -> None:
        """Create the client here: it binds its aiohttp session to the running loop."""
        if self._client is not None:
            return
        cfg = self._config
        # Fail on an unusable CA file with our error instead of the client's raw OSError.
        make_ssl_context(cfg.verify_ssl, cfg.ca_file)
        lib = self._lib = _client_library()
        # What InfluxDBClientAsync(url, token, org, timeout, verify_ssl, ssl_ca_cert) sets
        # up, from the client's own lower-level classes: the high-level class imports the
        # query, delete and dataframe machinery too (see _write_path_packages).
        conf = lib.Configuration()
        conf.host = cfg.url.rstrip("/")
        conf.verify_ssl = cfg.verify_ssl
        conf.ssl_ca_cert = str(cfg.ca_file) if cfg.ca_file else None
        conf.timeout = int(cfg.timeout * 1000)  # milliseconds, for the whole request
        conf.username = conf.password = None  # no user session (signin/signout) either
        self._client = lib.ApiClientAsync(
            configuration=conf,
            header_name="Authorization" if self._token else None,
            header_value=f"Token {self._token}" if self._token else None)
        self._write_service = lib.WriteService(self._client)

    async def write(self, payload: bytes) -> None:
        if not payload.strip():
            return
        if self._write_service is None or self._lib is None:
            raise RuntimeError(f"{self._where}: write() before open()")
        lib = self._lib
        secrets = (self._token,)
        encoding: dict[str, str] = {}
        body = payload
        if self._config.gzip:
            body = (await asyncio.to_thread(gzip_body, payload)
                    if len(payload) > GZIP_IN_THREAD else gzip_body(payload))
            encoding["content_encoding"] = "gzip"
        try:
            await self._write_service.post_write_async(
                org=self._config.org,
                bucket=self._config.bucket,
                body=body,
                precision="ns",
                content_type="text/plain; charset=utf-8",
                async_req=False,
                _return_http_data_only=False,
                **encoding,
            )
        except lib.ApiException as exc:
            error = status_error(
                exc.status or 0, exc.headers, exc.body, where=self._where, secrets=secrets
            )
            if error is not None:
                raise error from exc
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, where=self._where, secrets=secrets) from exc
        except lib.InfluxDBError as exc:  # client-side trouble without an HTTP answer
            raise SinkUnavailable(f"{self._where}: {exc.message}") from exc

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._write_service = self._client, None, None
            await client.close()


register_sink("influxdb", InfluxDBSinkConfig, InfluxDBSink)
