"""Health, metrics and systemd integration; importing this package registers the services.

Modules, one job each: ``monitor`` (loop heartbeat, stall watcher, commit progress),
``snapshot`` (one picture of the gateway), ``checks`` (live/ready verdicts), ``metrics``
(Prometheus exposition; the only prometheus_client import), ``server`` (aiohttp.web
endpoint), ``selfreport`` (health as readings into the store), ``watchdog`` (sd_notify),
``statustable`` (``iotgw status``), ``services`` (the registry entries).
"""

from gateway.health import services as _services  # noqa: F401 - registers the services
