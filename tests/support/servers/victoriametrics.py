"""VictoriaMetrics for the tests: single node, the gateway's usual ``influxdb`` sink target,
with helpers to write, flush, export and query what it stored.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from tests.support.servers.common import (
    LOOPBACK,
    ServerError,
    ServerProcess,
    binary,
    check_ok,
    http_request,
)


class VictoriaMetrics(ServerProcess):
    """Single-node VictoriaMetrics, the gateway's usual ``influxdb`` sink target.

    Flags chosen for tests: dedup at 1ms so a replayed point collapses like in InfluxDB;
    100y retention so fixed historic timestamps are stored instead of silently dropped;
    no latency offset / rollup cache so fresh samples are queryable at once; a short
    graceful-shutdown so stop() does not wait 7s for idle keep-alive clients.
    """

    name = "victoria"

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        dedup_interval: str | None = "1ms",
        retention: str = "100y",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(base_dir, [port])
        self.data_dir = self.dir / "data"
        self.dedup_interval = dedup_interval
        self.retention = retention
        self.extra_args = list(extra_args)

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def url(self) -> str:
        """Base URL for influxdb-client (``/api/v2/write``) and the v1 ``/write``."""
        return f"http://{LOOPBACK}:{self.port}"

    def _command(self) -> list[str]:
        args = [
            binary("victoria-metrics", "/usr/bin/victoria-metrics"),
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr={LOOPBACK}:{self.port}",
            f"-retentionPeriod={self.retention}",
            "-loggerLevel=ERROR",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-http.maxGracefulShutdownDuration=1s",
        ]
        if self.dedup_interval:
            args.append(f"-dedup.minScrapeInterval={self.dedup_interval}")
        return args + self.extra_args

    def _is_ready(self) -> bool:
        status, body = http_request("GET", f"{self.url}/health", timeout=1.0)
        return status == 200 and body.strip() == b"OK"

    def get(self, path: str, **params: str | Sequence[str]) -> bytes:
        """GET any endpoint; raise ServerError on an HTTP error."""
        status, body = http_request("GET", f"{self.url}{path}", params=params)
        return check_ok(status, body, f"GET {path}")

    def flush(self) -> None:
        """Make everything ingested so far searchable (it is buffered for up to ~10s)."""
        self.get("/internal/force_flush")

    def write_lines(self, lines: str | Iterable[str], precision: str = "ns") -> None:
        """Seed data through the v1 ``/write`` endpoint (line protocol)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        status, text = http_request(
            "POST", f"{self.url}/write", params={"precision": precision}, data=body.encode()
        )
        check_ok(status, text, "write")

    def export(
        self, match: str | Sequence[str] = '{__name__!=""}', *, start: float | None = None
    ) -> list[dict[str, Any]]:
        """Raw samples of every matching series: [{metric, values, timestamps}], sorted.

        Flushes first and passes an explicit ``end`` in the future: without it the export
        ends at VictoriaMetrics' coarse one-second clock, hiding samples for up to ~1s.
        """
        self.flush()
        params: dict[str, str | Sequence[str]] = {
            "match[]": [match] if isinstance(match, str) else list(match),
            "end": f"{time.time() + 7 * 86400:.3f}",
        }
        if start is not None:
            params["start"] = f"{start:.3f}"
        body = self.get("/api/v1/export", **params)
        rows = [json.loads(line) for line in body.splitlines() if line.strip()]
        return sorted(rows, key=lambda r: json.dumps(r["metric"], sort_keys=True))

    def samples(self, match: str | Sequence[str]) -> dict[tuple[str, ...], list[tuple[int, float]]]:
        """{(name, k=v, ...): [(ms_timestamp, value), ...]} for compact exact assertions."""
        out: dict[tuple[str, ...], list[tuple[int, float]]] = {}
        for row in self.export(match):
            metric = dict(row["metric"])
            key = (metric.pop("__name__"), *(f"{k}={v}" for k, v in sorted(metric.items())))
            pairs = zip(row["timestamps"], row["values"], strict=True)
            out.setdefault(key, []).extend(pairs)
        return {k: sorted(v) for k, v in out.items()}

    def query(self, promql: str, at: float | None = None) -> dict[str, Any]:
        """PromQL instant query; the whole JSON answer (``["data"]["result"]``).

        ``at`` defaults to two seconds from now, for the same clock reason as export().
        """
        self.flush()
        when = time.time() + 2.0 if at is None else at
        body = self.get("/api/v1/query", query=promql, time=f"{when:.3f}")
        answer: dict[str, Any] = json.loads(body)
        if answer.get("status") != "success":
            raise ServerError(f"query {promql!r}: {answer}")
        return answer

    def series_count(self, match: str | Sequence[str] = '{__name__!=""}') -> int:
        """How many distinct series match (one per measurement_field + label set)."""
        return len(self.export(match))

    def delete_series(self, match: str) -> None:
        """Drop matching series, e.g. to reuse the session instance with clean state."""
        self.get("/api/v1/admin/tsdb/delete_series", **{"match[]": match})
