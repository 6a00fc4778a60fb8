"""One consistent picture of the gateway, taken when someone asks.

``/status`` serves it as JSON, ``/metrics`` renders it for Prometheus, ``iotgw status``
prints it as a table and the self-report turns it into readings. Taking it at request
time from the counters the gateway already keeps (GatewayStats, the buffer's meta table,
each DeviceContext's status) means no second set of counters that could disagree.

The JSON keys are a contract (``iotgw status`` of one version reads another's): add keys,
never rename them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import asdict
from typing import Any

from gateway import __version__
from gateway.alarms.stats import status_section as alarm_section
from gateway.health.checks import evaluate
from gateway.health.monitor import monitor_for

BUFFER_PROBE_TIMEOUT = 5.0
"""A buffer worker that cannot answer a stats query this fast is stuck (fsync on a dying
card, a lock): /healthz says so instead of hanging the prober."""


async def collect(gateway: Any) -> dict[str, Any]:
    monitor = monitor_for(gateway)
    model = gateway.config.model
    now = time.time()
    stats = gateway.stats
    pipeline = gateway.pipeline
    supervisor = gateway.supervisor
    buffer, lags = await _buffer(gateway)
    snap: dict[str, Any] = {
        "gateway": {
            "id": model.gateway.id, "site": model.gateway.site, "version": __version__,
            "pid": os.getpid(), "started": gateway.started,
            "uptime_seconds": round(now - gateway.started, 3), "now": now,
        },
        "loop": monitor.snapshot(),
        "clock": monitor.clock.snapshot(),
        "readings": {
            "in": stats.readings_in,
            "committed": stats.readings_committed,
            "pending": pipeline.pending if pipeline is not None else 0,
            "dropped": dict(sorted(stats.dropped.items())),
        },
        "connections": {name: dict(sorted(counts.items()))
                        for name, counts in sorted(stats.connections.items())},
        "pipeline_running": supervisor is not None and "pipeline" in supervisor.names(),
        "tasks": {"running": sorted(supervisor.names()) if supervisor else [],
                  "restarts": dict(sorted(supervisor.restarts.items())) if supervisor else {},
                  "failing": {name: asdict(failure) for name, failure
                              in sorted(supervisor.failing.items())} if supervisor else {}},
        "buffer": buffer,
        "sinks": _sinks(gateway, lags),
        "devices": _devices(gateway),
        "alarms": alarm_section(gateway, now),
    }
    try:
        snap["buffer"]["disk_free_bytes"] = shutil.disk_usage(gateway.config.data_dir).free
    except OSError:
        snap["buffer"]["disk_free_bytes"] = None
    snap["health"] = evaluate(snap)
    return snap


async def _buffer(gateway: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    try:
        async with asyncio.timeout(BUFFER_PROBE_TIMEOUT):
            stats = await gateway.buffer.stats()
    except TimeoutError:
        return {"ok": False, "error": f"no answer from the buffer within "
                f"{BUFFER_PROBE_TIMEOUT:g}s", "path": str(gateway.buffer.path)}, {}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                "path": str(gateway.buffer.path)}, {}
    lags = {name: asdict(lag) for name, lag in stats.sinks.items()}
    return {
        "ok": True, "error": None, "path": str(stats.path),
        "depth_lines": stats.depth_lines, "depth_chunks": stats.depth_chunks,
        "bytes_held": stats.bytes_held, "file_bytes": stats.file_bytes,
        "max_bytes": stats.max_bytes, "when_full": stats.when_full,
        "oldest_time_ns": stats.oldest_time_ns, "newest_time_ns": stats.newest_time_ns,
        "committed_total": stats.committed_total,
        "dropped_full_total": stats.dropped_full_total,
        "quarantined_chunks_total": stats.quarantined_chunks_total,
        "quarantined_lines_total": stats.quarantined_lines_total,
    }, lags


def _sinks(gateway: Any, lags: dict[str, dict[str, Any]]) -> dict[str, Any]:
    names = [s.sink_name for s in gateway.config.sinks]
    out: dict[str, Any] = {}
    for name in names:
        sink = gateway.stats.sink(name)
        lag = lags.get(name, {})
        out[name] = {
            "state": sink.state, "sent_lines": sink.sent_lines,
            "sent_batches": sink.sent_batches, "rejected_lines": sink.rejected_lines,
            "errors": sink.errors, "last_error": sink.last_error,
            "lag_lines": lag.get("lag_lines"), "lag_chunks": lag.get("lag_chunks"),
            "oldest_pending_ns": lag.get("oldest_pending_ns"),
        }
    return out


def _devices(gateway: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for device_id, ctx in sorted(gateway.devices.items()):
        status = ctx.status
        out[device_id] = {
            "state": str(status.state), "since": status.since, "last_seen": status.last_seen,
            "last_error": status.last_error, "condition": status.condition,
            "counters": dict(sorted(status.counters.items())),
            "poll_seconds": status.poll_seconds,
        }
    return out
