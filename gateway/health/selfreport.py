"""The gateway's own health as readings, so the central store and its dashboards see it.

``/metrics`` needs a scraper on the compound's network; the store already receives
everything the gateway buffers, across outages. Every ``health.report_interval`` the
status snapshot becomes three measurements, through the normal pipeline (so they are
buffered, tagged with site/gateway and forwarded like any reading):

* ``gateway_stats`` (device = the gateway id): readings_in, readings_committed,
  readings_dropped, readings_pending, buffer_lines, buffer_bytes, buffer_dropped_full,
  disk_free_bytes, loop_lag_seconds, loop_stalls, uptime_seconds, clock_before_build,
  and with alarm rules alarms_active, alarms_unacked, alarm_flood (1/0);
* ``gateway_sink`` (tag sink): lag_lines, lag_seconds, sent_lines, rejected_lines,
  errors, state, ok (1 while the sink delivers);
* ``device_status`` (device = each device, with its installer tags): state, online
  (1/0), last_seen_age_seconds, problems (sum of the driver's counters).

The names are the contract the Grafana dashboard and docs/operations.md rely on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.health.snapshot import collect
from gateway.reading import Reading

GATEWAY_FIELDS = ("readings_in", "readings_committed", "readings_dropped", "readings_pending",
                  "buffer_lines", "buffer_bytes", "buffer_dropped_full", "disk_free_bytes",
                  "loop_lag_seconds", "loop_stalls", "uptime_seconds", "clock_before_build",
                  "alarms_active", "alarms_unacked", "alarm_flood")
SINK_FIELDS = ("lag_lines", "lag_seconds", "sent_lines", "rejected_lines", "errors", "state",
               "ok")
DEVICE_FIELDS = ("state", "online", "last_seen_age_seconds", "problems")


def readings_from(snap: dict[str, Any], time_ns: int) -> dict[str, list[Reading]]:
    """Readings per submitting device id (the gateway's own id for gateway-wide ones)."""
    gw, buf, readings = snap["gateway"], snap["buffer"], snap["readings"]
    now = gw["now"]
    fields: dict[str, Any] = {
        "readings_in": readings["in"], "readings_committed": readings["committed"],
        "readings_dropped": sum(readings["dropped"].values()),
        "readings_pending": readings["pending"],
        "loop_lag_seconds": float(snap["loop"]["lag_seconds"]),
        "loop_stalls": snap["loop"]["stalls_total"],
        "uptime_seconds": float(gw["uptime_seconds"]),
        "clock_before_build": int(snap["clock"]["before_build"]),
    }
    if buf["ok"]:
        fields.update(buffer_lines=buf["depth_lines"], buffer_bytes=buf["bytes_held"],
                      buffer_dropped_full=buf["dropped_full_total"])
    if buf.get("disk_free_bytes") is not None:
        fields["disk_free_bytes"] = buf["disk_free_bytes"]
    alarms = snap.get("alarms")
    if alarms is not None and alarms["enabled"]:  # a fleet panel: who has alarms standing
        fields.update(alarms_active=alarms["active"], alarms_unacked=alarms["unacked"],
                      alarm_flood=int(alarms["flood"]))
    out: dict[str, list[Reading]] = {gw["id"]: [Reading("gateway_stats", {}, fields, time_ns)]}
    for name, sink in snap["sinks"].items():
        sink_fields: dict[str, Any] = {
            "sent_lines": sink["sent_lines"], "rejected_lines": sink["rejected_lines"],
            "errors": sink["errors"], "state": sink["state"],
            "ok": int(sink["state"] == "ok")}
        if sink["lag_lines"] is not None:
            oldest = sink["oldest_pending_ns"]
            sink_fields["lag_lines"] = sink["lag_lines"]
            sink_fields["lag_seconds"] = max(0.0, now - oldest / 1e9) if oldest else 0.0
        out[gw["id"]].append(Reading("gateway_sink", {"sink": name}, sink_fields, time_ns))
    for device_id, device in snap["devices"].items():
        device_fields: dict[str, Any] = {
            "state": device["state"], "online": int(device["state"] == "online"),
            "problems": sum(device["counters"].values())}
        if device["last_seen"] is not None:
            device_fields["last_seen_age_seconds"] = max(0.0, now - device["last_seen"])
        out.setdefault(device_id, []).append(
            Reading("device_status", {}, device_fields, time_ns))
    return out


async def report_forever(gateway: Any, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if gateway.pipeline is None:
            continue
        snap = await collect(gateway)
        for device_id, readings in readings_from(snap, time.time_ns()).items():
            await gateway.pipeline.submit(device_id, readings)
