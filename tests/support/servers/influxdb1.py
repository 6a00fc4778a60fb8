"""InfluxDB 1.x for the tests (the ``influxdb1`` sink's target), optionally with auth."""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Iterable
from typing import Any

from tests.support.servers.common import (
    LOOPBACK,
    ServerError,
    ServerProcess,
    binary,
    check_ok,
    http_request,
)


class InfluxDB1(ServerProcess):
    """InfluxDB 1.x (Debian 1.6.7), target of the gateway's ``influxdb1`` sink.

    Speaks only the v1 API (``/write``, ``/query``). With ``username`` set, HTTP auth is
    enabled and that user is created as admin right after the first start.
    """

    name = "influxdb1"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        rpc_port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        extra_config: str = "",
    ) -> None:
        super().__init__(base_dir, [port, rpc_port])
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        self.username = username
        self.password = password
        self.extra_config = extra_config
        self.config_path = self.dir / "influxdb.conf"

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def rpc_port(self) -> int:
        """The backup/restore RPC listener: it binds too, so it must be private as well."""
        return self._ports[1]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def auth_enabled(self) -> bool:
        return self.username is not None

    def _prepare(self) -> None:
        d = self.dir
        self.config_path.write_text(
            f"""\
reporting-disabled = true
reporting-enabled = false
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{d / 'meta'}"
  logging-enabled = false

[data]
  dir = "{d / 'data'}"
  wal-dir = "{d / 'wal'}"
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{self.port}"
  auth-enabled = {'true' if self.auth_enabled else 'false'}
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

{self.extra_config}
"""
        )

    def _env(self) -> dict[str, str]:
        # INFLUXDB_* variables override the config file; keep the instance hermetic.
        return {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}

    def _command(self) -> list[str]:
        return [binary("influxd", "/usr/bin/influxd"), "-config", str(self.config_path)]

    def _is_ready(self) -> bool:
        status, _ = http_request("GET", f"{self.url}/ping", timeout=1.0)
        return status == 204

    def _after_ready(self) -> None:
        if self.auth_enabled:
            # Allowed without credentials only while no admin exists (first start).
            self.query(
                f"CREATE USER \"{self.username}\" WITH PASSWORD '{self.password}' "
                "WITH ALL PRIVILEGES",
                auth=False,
            )

    def _auth_headers(self, auth: bool) -> dict[str, str]:
        """Basic auth: 1.6 reads u/p from the URL or this header, never from a form body."""
        if auth and self.auth_enabled:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        return {}

    def query(
        self, q: str, db: str | None = None, *, epoch: str | None = "ns", auth: bool = True
    ) -> dict[str, Any]:
        """InfluxQL via POST /query; parsed JSON. Times are integer ns unless epoch=None.

        HTTP errors raise ServerError; per-statement errors stay in ``results[i].error``.
        """
        params = {"q": q}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        status, body = http_request(
            "POST",
            f"{self.url}/query",
            data=urllib.parse.urlencode(params).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                **self._auth_headers(auth),
            },
        )
        result: dict[str, Any] = json.loads(check_ok(status, body, f"query {q!r}"))
        return result

    def select(self, q: str, db: str) -> list[dict[str, Any]]:
        """Rows of the first statement as dicts (``time`` in ns); [] when nothing matched."""
        result = self.query(q, db)["results"][0]
        if "error" in result:
            raise ServerError(f"query {q!r}: {result['error']}")
        rows: list[dict[str, Any]] = []
        for series in result.get("series", []):
            tags = series.get("tags", {})
            for values in series["values"]:
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows

    def create_database(self, name: str) -> None:
        result = self.query(f'CREATE DATABASE "{name}"')["results"][0]
        if "error" in result:
            raise ServerError(f"create database {name}: {result['error']}")

    def write_lines(self, db: str, lines: str | Iterable[str], precision: str = "ns") -> None:
        """Seed data through ``/write`` (line protocol)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        status, text = http_request(
            "POST",
            f"{self.url}/write",
            params={"db": db, "precision": precision},
            data=body.encode(),
            headers=self._auth_headers(True),
        )
        check_ok(status, text, "write")
