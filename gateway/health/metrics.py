"""``/metrics`` in the Prometheus text format; the only module that imports prometheus_client.

A custom collector turns a status snapshot (taken at scrape time) into metric families,
instead of mirroring every counter into prometheus_client Counter objects: the gateway
keeps one set of counters and the exposition can never drift from ``/status``. A fresh
registry per scrape keeps gateways that share a process (tests) apart.

Counters restart at zero with the process (``iotgw_start_time_seconds`` tells when),
except ``iotgw_buffer_*_total``, which the buffer keeps on disk across restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.alarms.model import AlarmState

CONTENT_TYPE = CONTENT_TYPE_LATEST
SINK_STATES = ("starting", "ok", "retrying", "failed")
DEVICE_STATES = ("starting", "online", "offline", "error")
ALARM_SEVERITIES = ("1", "2", "3", "4")
ALARM_STATES = tuple(str(s) for s in AlarmState)


def render(snap: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snap))
    return generate_latest(registry)


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        family.add_metric(list((labels or {}).values()), value)
    return family


class SnapshotCollector(Collector):
    def __init__(self, snap: dict[str, Any]) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Metric]:
        yield from self._gateway()
        yield from self._readings()
        yield from self._buffer()
        yield from self._sinks()
        yield from self._devices()
        yield from self._loop_and_clock()
        yield from self._alarms()

    def _gateway(self) -> Iterator[Metric]:
        gw, health = self.snap["gateway"], self.snap["health"]
        info = GaugeMetricFamily("iotgw_info", "Gateway identity (value always 1)",
                                 labels=["gateway", "site", "version"])
        info.add_metric([gw["id"], gw["site"], gw["version"]], 1)
        yield info
        yield _gauge("iotgw_start_time_seconds", "When the process started (epoch seconds)",
                     gw["started"])
        yield _gauge("iotgw_live", "1 when /healthz passes", int(health["live"]))
        yield _gauge("iotgw_ready", "1 when /readyz passes", int(health["ready"]))
        checks = GaugeMetricFamily("iotgw_health_check", "Each health check, 1 = passing",
                                   labels=["probe", "check"])
        for probe in ("liveness", "readiness"):
            for name, check in health[probe].items():
                checks.add_metric([probe, name], int(check["ok"]))
        yield checks
        restarts = CounterMetricFamily("iotgw_task_restarts", "Supervised task restarts",
                                       labels=["task"])
        for task, count in self.snap["tasks"]["restarts"].items():
            restarts.add_metric([task], count)
        yield restarts

    def _readings(self) -> Iterator[Metric]:
        readings = self.snap["readings"]
        yield CounterMetricFamily("iotgw_readings_received", "Readings handed in by drivers",
                                  value=readings["in"])
        yield CounterMetricFamily("iotgw_readings_committed",
                                  "Readings committed to the buffer", value=readings["committed"])
        yield _gauge("iotgw_readings_pending", "Readings queued in memory for the next commit",
                     readings["pending"])
        dropped = CounterMetricFamily("iotgw_readings_dropped",
                                      "Readings or fields refused, by reason", labels=["reason"])
        for reason, count in readings["dropped"].items():
            dropped.add_metric([reason], count)
        yield dropped
        connections = CounterMetricFamily(
            "iotgw_connection_events", "Problems of shared connections (HTTP receiver, "
            "camera streams) that belong to no one device, by kind",
            labels=["connection", "kind"])
        for name, counts in self.snap.get("connections", {}).items():
            for kind, count in counts.items():
                connections.add_metric([name, kind], count)
        yield connections

    def _buffer(self) -> Iterator[Metric]:
        buf = self.snap["buffer"]
        yield _gauge("iotgw_buffer_ok", "1 when the buffer answered the probe", int(buf["ok"]))
        yield _gauge("iotgw_disk_free_bytes", "Free bytes on the data_dir filesystem",
                     buf.get("disk_free_bytes"))
        if not buf["ok"]:
            return
        yield _gauge("iotgw_buffer_depth_lines", "Lines held in the buffer", buf["depth_lines"])
        yield _gauge("iotgw_buffer_depth_chunks", "Chunks held in the buffer",
                     buf["depth_chunks"])
        yield _gauge("iotgw_buffer_bytes", "Payload bytes held", buf["bytes_held"])
        yield _gauge("iotgw_buffer_file_bytes", "Buffer file plus WAL size", buf["file_bytes"])
        yield _gauge("iotgw_buffer_max_bytes", "Payload bytes cap (buffer.max_bytes)",
                     buf["max_bytes"])
        oldest = buf["oldest_time_ns"]
        yield _gauge("iotgw_buffer_oldest_reading_timestamp_seconds",
                     "Time of the oldest buffered reading", oldest / 1e9 if oldest else None)
        yield CounterMetricFamily("iotgw_buffer_committed_lines",
                                  "Lines ever committed (kept across restarts)",
                                  value=buf["committed_total"])
        yield CounterMetricFamily("iotgw_buffer_dropped_lines",
                                  "Lines dropped because the buffer was full (kept across "
                                  "restarts)", value=buf["dropped_full_total"])
        yield CounterMetricFamily("iotgw_buffer_quarantined_lines",
                                  "Lines in chunks that failed their checksum (bitrot), "
                                  "moved to the quarantine table and not forwarded",
                                  value=buf["quarantined_lines_total"])
        yield CounterMetricFamily("iotgw_buffer_quarantined_chunks",
                                  "Chunks that failed their checksum (bitrot), moved to the "
                                  "quarantine table", value=buf["quarantined_chunks_total"])

    def _sinks(self) -> Iterator[Metric]:
        now = self.snap["gateway"]["now"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "lag_lines": GaugeMetricFamily("iotgw_sink_lag_lines",
                                           "Buffered lines this sink has not stored yet",
                                           labels=["sink"]),
            "lag_seconds": GaugeMetricFamily("iotgw_sink_lag_seconds",
                                             "Age of the oldest reading this sink has not "
                                             "stored (0 when caught up)", labels=["sink"]),
            "sent_lines": CounterMetricFamily("iotgw_sink_sent_lines", "Lines stored",
                                              labels=["sink"]),
            "sent_batches": CounterMetricFamily("iotgw_sink_sent_batches", "Batches stored",
                                                labels=["sink"]),
            "rejected_lines": CounterMetricFamily("iotgw_sink_rejected_lines",
                                                  "Lines the store refused (dropped)",
                                                  labels=["sink"]),
            "errors": CounterMetricFamily("iotgw_sink_errors", "Failed delivery attempts",
                                          labels=["sink"]),
        }
        state = GaugeMetricFamily("iotgw_sink_state", "1 for the sink's current state",
                                  labels=["sink", "state"])
        for name, sink in self.snap["sinks"].items():
            if sink["lag_lines"] is not None:
                families["lag_lines"].add_metric([name], sink["lag_lines"])
                oldest = sink["oldest_pending_ns"]
                families["lag_seconds"].add_metric(
                    [name], max(0.0, now - oldest / 1e9) if oldest else 0.0)
            for key in ("sent_lines", "sent_batches", "rejected_lines", "errors"):
                families[key].add_metric([name], sink[key])
            for candidate in SINK_STATES:
                state.add_metric([name, candidate], int(sink["state"] == candidate))
        yield from families.values()
        yield state

    def _devices(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("iotgw_device_state", "1 for the device's current state",
                                  labels=["device", "state"])
        seen = GaugeMetricFamily("iotgw_device_last_seen_timestamp_seconds",
                                 "When the device last produced readings", labels=["device"])
        since = GaugeMetricFamily("iotgw_device_state_since_timestamp_seconds",
                                  "When the device entered its current state",
                                  labels=["device"])
        latency = GaugeMetricFamily("iotgw_device_poll_seconds",
                                    "Duration of the device's last successful poll, waiting "
                                    "for the bus included (polled drivers)", labels=["device"])
        condition = GaugeMetricFamily(
            "iotgw_device_condition", "1 for the device's current condition, the driver's "
            "word beside the state (cameras: up, auth_failed, unreachable, stream_silent)",
            labels=["device", "condition"])
        problems = CounterMetricFamily("iotgw_device_events",
                                       "Per-device counters kept by its driver (timeouts, bad "
                                       "frames, writes...)", labels=["device", "kind"])
        for device_id, device in self.snap["devices"].items():
            for candidate in DEVICE_STATES:
                state.add_metric([device_id, candidate], int(device["state"] == candidate))
            if device["last_seen"] is not None:
                seen.add_metric([device_id], device["last_seen"])
            since.add_metric([device_id], device["since"])
            if device.get("condition") is not None:
                condition.add_metric([device_id, device["condition"]], 1)
            if device.get("poll_seconds") is not None:
                latency.add_metric([device_id], device["poll_seconds"])
            for kind, count in device["counters"].items():
                problems.add_metric([device_id, kind], count)
        yield from (state, seen, since, latency, condition, problems)

    def _alarms(self) -> Iterator[Metric]:
        """Alarm counts (not health: readiness never depends on alarms). A snapshot from an
        older gateway has no ``alarms`` key and yields nothing."""
        alarms = self.snap.get("alarms")
        if alarms is None or not alarms["enabled"]:
            return
        active = GaugeMetricFamily("iotgw_alarms_active",
                                   "Active alarms (acknowledged or not) by severity, 1 highest",
                                   labels=["severity"])
        unacked = GaugeMetricFamily("iotgw_alarms_unacknowledged",
                                    "Alarms waiting for an acknowledge (active or cleared) by "
                                    "severity", labels=["severity"])
        for severity in ALARM_SEVERITIES:
            active.add_metric([severity], alarms["active_by_severity"].get(severity, 0))
            unacked.add_metric([severity], alarms["unacked_by_severity"].get(severity, 0))
        states = GaugeMetricFamily("iotgw_alarms", "Alarms by state", labels=["state"])
        for state in ALARM_STATES:
            states.add_metric([state], alarms["by_state"].get(state, 0))
        transitions = CounterMetricFamily("iotgw_alarm_transitions",
                                          "Alarm transitions by cause (raise, clear, ack ...)",
                                          labels=["cause"])
        for cause, count in alarms["transitions"].items():
            transitions.add_metric([cause], count)
        yield from (active, unacked, states, transitions)
        yield CounterMetricFamily("iotgw_alarm_chatter",
                                  "Times an alarm was flagged as chattering",
                                  value=alarms["chatter_total"])
        yield _gauge("iotgw_alarms_chattering", "Alarms flagged as chattering now",
                     alarms["chattering"])
        yield CounterMetricFamily("iotgw_alarm_floods",
                                  "Alarm floods entered (EEMUA 191: more than 10 raised in "
                                  "10 minutes)", value=alarms["floods_total"])
        yield _gauge("iotgw_alarm_flood", "1 while more than alarms.flood_count (10) alarms were "
                     "raised within alarms.flood_window (10 minutes)", int(alarms["flood"]))
        yield _gauge("iotgw_alarms_raised_last_10m", "Alarms raised within alarms.flood_window",
                     alarms["raised_last_10min"])
        errors = CounterMetricFamily("iotgw_alarm_rule_errors",
                                     "Rule evaluations that failed at run time (missing field, "
                                     "wrong type), by rule", labels=["rule"])
        for rule, count in alarms.get("rule_errors", {}).items():
            errors.add_metric([rule], count)
        yield errors
        yield CounterMetricFamily("iotgw_alarm_evaluations", "Rule evaluations by the engine",
                                  value=alarms.get("evaluations", 0))

    def _loop_and_clock(self) -> Iterator[Metric]:
        loop, clock = self.snap["loop"], self.snap["clock"]
        yield _gauge("iotgw_event_loop_lag_seconds", "How late the loop ran the heartbeat",
                     loop["lag_seconds"])
        yield _gauge("iotgw_event_loop_lag_max_seconds", "Worst loop lag over the last minute",
                     loop["lag_max_seconds"])
        yield CounterMetricFamily("iotgw_event_loop_stalls",
                                  "Times the loop was stuck longer than health.max_loop_lag",
                                  value=loop["stalls_total"])
        yield _gauge("iotgw_clock_before_build",
                     "1 when the wall clock reads earlier than this release (not set)",
                     int(clock["before_build"]))
        synced = clock["synchronised"]
        yield _gauge("iotgw_clock_synchronised", "Kernel NTP sync flag (absent: unknown)",
                     None if synced is None else int(synced))
        jumps = CounterMetricFamily("iotgw_clock_jumps", "Wall clock steps seen",
                                    labels=["direction"])
        jumps.add_metric(["forward"], clock["jumps_forward"])
        jumps.add_metric(["backward"], clock["jumps_backward"])
        yield jumps
        yield _gauge("iotgw_clock_last_jump_seconds",
                     "Size of the last wall clock step (negative: backwards)",
                     clock["last_jump_seconds"])
