"""Kept importable for tests written against it: the servers now live one module each in
tests/support/servers/ (import from ``tests.support.servers`` in new code)."""

from tests.support.servers import (
    DEFAULT_MQTT_ACL,
    DEFAULT_MQTT_USERS,
    LOOPBACK,
    InfluxDB1,
    Mosquitto,
    ServerError,
    ServerProcess,
    TestCA,
    VictoriaMetrics,
    free_port,
    http_request,
)

__all__ = [
    "DEFAULT_MQTT_ACL",
    "DEFAULT_MQTT_USERS",
    "LOOPBACK",
    "InfluxDB1",
    "Mosquitto",
    "ServerError",
    "ServerProcess",
    "TestCA",
    "VictoriaMetrics",
    "free_port",
    "http_request",
]
