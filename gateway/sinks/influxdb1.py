"""InfluxDB 1.x sink: POSTs line protocol to ``/write`` through ``gateway.sinks.http`` (aiohttp).

InfluxDB 1.x has no ``/api/v2/write`` before 1.8, and many compounds still run 1.x, so
this speaks the 1.x API directly. Credentials go in a Basic auth header rather than the
``u``/``p`` query parameters, so they never appear in URLs, proxies' access logs or error
messages that quote the URL.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from gateway.config.types import SecretsModel, secret_value
from gateway.sinks import register_sink
from gateway.sinks.base import SinkConfigBase
from gateway.sinks.http import HttpSession
from gateway.sinks.httpcommon import display_url, status_error
from gateway.urls import SinkUrl, userinfo, without_userinfo

GZIP_LEVEL = 5
"""Most of gzip's gain on line protocol at a fraction of level 9's CPU on small boards."""


class InfluxDB1SinkConfig(SinkConfigBase, SecretsModel):
    """An InfluxDB 1.x server (or anything speaking its ``/write`` API)."""

    secret_fields = ("password",)

    type: Literal["influxdb1"]
    url: SinkUrl = Field(description="e.g. http://influx:8086")
    database: str = Field(min_length=1)
    retention_policy: str | None = Field(default=None, min_length=1)
    username: str | None = Field(default=None, min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    gzip: bool = Field(default=False, description="send Content-Encoding: gzip (1.x >= 1.4)")
    verify_ssl: bool = True
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _password_needs_username(self) -> InfluxDB1SinkConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self

    @model_validator(mode="after")
    def _credentials_once(self) -> InfluxDB1SinkConfig:
        """URL credentials alone are fine (sent as Basic auth like username/password);
        both at once made every request fail inside aiohttp and the sink restart forever."""
        if userinfo(self.url) is not None and (self.username or self.password
                                               or self.password_file):
            raise ValueError("credentials are given twice, in url (user:password@) and as "
                             "username/password: keep one (username with password_file keeps "
                             "the secret out of the config)")
        return self

    def credentials(self) -> tuple[str, str] | None:
        """(user, password) for Basic auth, from username/password or from the URL."""
        if self.username:
            return self.username, secret_value(self.password) or ""
        in_url = userinfo(self.url)
        return None if in_url is None else (in_url[0], in_url[1] or "")


class InfluxDB1Sink:
    """Writes line-protocol batches to InfluxDB 1.x; never retries."""

    def __init__(self, config: InfluxDB1SinkConfig, data_dir: Path | None = None) -> None:
        self.name = config.sink_name
        self._config = config
        basic_auth = config.credentials()
        self._password = basic_auth[1] if basic_auth else None
        self._endpoint = without_userinfo(config.url).rstrip("/") + "/write"
        self._where = display_url(self._endpoint)
        self._params = {"db": config.database, "precision": "ns"}
        if config.retention_policy:
            self._params["rp"] = config.retention_policy
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._http = HttpSession(
            timeout=config.timeout,
            verify_ssl=config.verify_ssl,
            ca_file=config.ca_file,
            basic_auth=basic_auth,
            where=self._where,
            secrets=(self._password,),
        )

    async def open(self) -> None:
        await self._http.open()

    async def write(self, payload: bytes) -> None:
        if not payload.strip():
            return
        body = gzip.compress(payload, compresslevel=GZIP_LEVEL) if self._config.gzip else payload
        response = await self._http.post(
            self._endpoint, body, params=self._params, headers=self._headers
        )
        error = status_error(
            response.status,
            response.headers,
            response.body,
            where=self._where,
            secrets=(self._password,),
        )
        if error is not None:
            raise error

    async def close(self) -> None:
        await self._http.close()


register_sink("influxdb1", InfluxDB1SinkConfig, InfluxDB1Sink)
