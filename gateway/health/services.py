"""Registry entries: which health services a gateway runs, decided from its config.

* ``loop-monitor``: always; the heartbeat, stall watcher and clock check are cheap and
  the watchdog and endpoint both read it.
* ``systemd``: when started by systemd (``$NOTIFY_SOCKET``): READY, WATCHDOG, STOPPING.
* ``health-http``: when the config has an enabled ``health`` section.
* ``self-report``: with it, when ``health.report_interval`` is not 0.

The HTTP server and prometheus_client are imported only when the endpoint is enabled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.health.monitor import monitor_for
from gateway.registry import register_service

Runner = Callable[[], Awaitable[None]]


def _sample(gateway: Any) -> Callable[[], tuple[int, int]]:
    def sample() -> tuple[int, int]:
        pipeline = gateway.pipeline
        return gateway.stats.readings_committed, pipeline.pending if pipeline else 0
    return sample


def loop_monitor(gateway: Any) -> Runner:
    monitor = monitor_for(gateway)
    return lambda: monitor.run(_sample(gateway))


def systemd(gateway: Any) -> Runner | None:
    from gateway.health.watchdog import watchdog_runner

    return watchdog_runner(gateway, monitor_for(gateway))


def health_http(gateway: Any) -> Runner | None:
    health = gateway.config.model.health
    if health is None or not health.enabled:
        return None
    from gateway.health.server import serve

    return lambda: serve(gateway, health.host, health.port)


def self_report(gateway: Any) -> Runner | None:
    health = gateway.config.model.health
    if health is None or not health.enabled or not health.report_interval:
        return None
    from gateway.health.selfreport import report_forever

    return lambda: report_forever(gateway, health.report_interval)


register_service("loop-monitor", loop_monitor)
register_service("systemd", systemd)
register_service("health-http", health_http)
register_service("self-report", self_report)
