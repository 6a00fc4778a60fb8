"""InfluxDB 2.x/3.x (and VictoriaMetrics) sink: the only module that imports influxdb_client.

Uses the client's async write API against ``/api/v2/write``. VictoriaMetrics accepts the
same endpoint and ignores org, bucket and token, so one sink type covers all three.

How influxdb-client 1.x's ``WriteApiAsync.write`` reports outcomes (read from its source,
because its docs only say "True ... otherwise raise"):

* any non-2xx answer raises ``influxdb_client.rest.ApiException`` with ``.status``,
  ``.headers`` (aiohttp's CIMultiDictProxy) and ``.body`` (raw bytes);
* network failures and timeouts escape unwrapped as aiohttp / ``TimeoutError`` exceptions;
* it *returns* ``False`` for a 2xx other than 201/204 (e.g. a proxy answering 200). The
  server still accepted the data, so that counts as success here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from pydantic import Field, SecretStr

from gateway.config.types import SecretsModel, secret_value
from gateway.errors import SinkUnavailable
from gateway.sinks import register_sink
from gateway.sinks.base import SinkConfigBase
from gateway.sinks.http import (
    TRANSPORT_ERRORS,
    display_url,
    make_ssl_context,
    status_error,
    transport_error,
)

URL_PATTERN = r"^https?://[^\s/]+(/\S*)?$"


class InfluxDBSinkConfig(SinkConfigBase, SecretsModel):
    """An InfluxDB 2.x/3.x or VictoriaMetrics server, written through ``/api/v2/write``."""

    secret_fields = ("token",)

    type: Literal["influxdb"]
    url: str = Field(pattern=URL_PATTERN, description="e.g. http://influx:8086")
    org: str = Field(default="-", min_length=1, description="ignored by InfluxDB 3 and VM")
    bucket: str = Field(min_length=1, description="bucket (2.x), database (3.x), any (VM)")
    token: SecretStr | None = None
    token_file: Path | None = None
    gzip: bool = True
    verify_ssl: bool = True
    ca_file: Path | None = None


class InfluxDBSink:
    """Writes line-protocol batches with influxdb-client's async API; never retries."""

    def __init__(self, config: InfluxDBSinkConfig, data_dir: Path | None = None) -> None:
        self.name = config.sink_name
        self._config = config
        self._token = secret_value(config.token)
        self._where = f"{display_url(config.url)}/api/v2/write"
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None

    async def open(self) -> None:
        """Create the client here: it binds its aiohttp session to the running loop."""
        if self._client is not None:
            return
        cfg = self._config
        # Fail on an unusable CA file with our error instead of the client's raw OSError.
        make_ssl_context(cfg.verify_ssl, cfg.ca_file)
        self._client = InfluxDBClientAsync(
            url=cfg.url,
            token=self._token,
            org=cfg.org,
            enable_gzip=cfg.gzip,
            timeout=int(cfg.timeout * 1000),
            verify_ssl=cfg.verify_ssl,
            ssl_ca_cert=str(cfg.ca_file) if cfg.ca_file else None,
        )
        self._write_api = self._client.write_api()

    async def write(self, payload: bytes) -> None:
        if not payload.strip():
            return
        if self._write_api is None:
            raise RuntimeError(f"{self._where}: write() before open()")
        secrets = (self._token,)
        try:
            await self._write_api.write(
                bucket=self._config.bucket,
                org=self._config.org,
                record=payload,
                write_precision=WritePrecision.NS,
            )
        except ApiException as exc:
            error = status_error(
                exc.status or 0, exc.headers, exc.body, where=self._where, secrets=secrets
            )
            if error is not None:
                raise error from exc
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, where=self._where, secrets=secrets) from exc
        except InfluxDBError as exc:  # client-side trouble without an HTTP answer
            raise SinkUnavailable(f"{self._where}: {exc.message}") from exc

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._write_api = self._client, None, None
            await client.close()


register_sink("influxdb", InfluxDBSinkConfig, InfluxDBSink)
