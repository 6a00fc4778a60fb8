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
import weakref
from dataclasses import asdict
from typing import Any

from gateway import __version__
from gateway.alarms.stats import status_section as alarm_section
from gateway.health.checks import evaluate
from gateway.health.monitor import monitor_for

BUFFER_PROBE_TIMEOUT = 5.0
"""A buffer worker that has not answered a stats query for this long is stuck (fsync on a
dying card, a frozen file system, a lock): the snapshot says so."""
BUFFER_ANSWER_WAIT = 0.25
"""How long a request waits for the buffer's answer before it reports the last one. The
stats query runs on the buffer's one worker thread, behind any commit; during a disk
stall /healthz took the full 5 s to answer (an outside probe), longer than most probes
wait. Once the buffer has answered once, no request waits longer than this."""


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


BufferView = tuple[dict[str, Any], dict[str, dict[str, Any]]]
"""The ``buffer`` section of the snapshot and the lag of each sink."""


class BufferProbe:
    """At most one stats query in flight per gateway, and the last answer.

    Each request used to queue a query of its own behind a stuck commit and wait for it
    (5 s); now a request joins the query in flight, waits for it at most
    :data:`BUFFER_ANSWER_WAIT`, and otherwise reports the last answer with its age, or the
    buffer as stuck once the query has waited :data:`BUFFER_PROBE_TIMEOUT`."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway
        self._asking: asyncio.Future[Any] | None = None
        self._asked_at = 0.0
        self._last: BufferView | None = None
        self._answered_at = 0.0

    async def view(self) -> BufferView:
        if self._asking is None:
            self._asking = asyncio.ensure_future(self._gateway.buffer.stats())
            self._asking.add_done_callback(_retrieved)  # read later, or never at a stop
            self._asked_at = time.monotonic()
        asking = self._asking
        waited = time.monotonic() - self._asked_at
        wait = BUFFER_ANSWER_WAIT if self._last is not None else \
            max(BUFFER_ANSWER_WAIT, BUFFER_PROBE_TIMEOUT - waited)  # nothing known yet
        await asyncio.wait({asking}, timeout=wait)
        if asking.done():
            self._asking = None
            self._last, self._answered_at = _answer(self._gateway, asking), time.monotonic()
            return dict(self._last[0]), self._last[1]
        waited = time.monotonic() - self._asked_at
        if waited > BUFFER_PROBE_TIMEOUT or self._last is None:
            return {"ok": False, "error": f"no answer from the buffer for {waited:.0f}s (its "
                    "thread is stuck: a stalled or failing disk?)",
                    "path": str(self._gateway.buffer.path),
                    "unanswered_seconds": round(waited, 3)}, {}
        section, lags = self._last
        return {**section, "unanswered_seconds": round(waited, 3),
                "answer_age_seconds": round(time.monotonic() - self._answered_at, 3)}, lags


_PROBES: weakref.WeakKeyDictionary[Any, BufferProbe] = weakref.WeakKeyDictionary()


async def _buffer(gateway: Any) -> BufferView:
    probe = _PROBES.get(gateway)
    if probe is None:
        probe = _PROBES[gateway] = BufferProbe(gateway)
    return await probe.view()


def _retrieved(asked: asyncio.Future[Any]) -> None:
    if not asked.cancelled():
        asked.exception()


def _answer(gateway: Any, asked: asyncio.Future[Any]) -> BufferView:
    if asked.cancelled():
        return {"ok": False, "error": "the buffer query was cancelled",
                "path": str(gateway.buffer.path)}, {}
    exc = asked.exception()
    if exc is not None:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                "path": str(gateway.buffer.path)}, {}
    stats = asked.result()
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
