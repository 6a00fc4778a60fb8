"""Real servers for the test suite: VictoriaMetrics, InfluxDB 1.x and Mosquitto, one
module each, plus the common child-process lifecycle and a throwaway TLS CA.

Each server runs as a child process on free loopback ports, with its config, data and log
in a private temp dir, so tests exercise the same wire protocols the gateway meets in the
field and never touch a system service (e.g. the machine's mosquitto on 1883). The
fixtures that start them are in tests/conftest.py.
"""

from tests.support.servers.common import (
    LOOPBACK,
    ServerError,
    ServerProcess,
    free_port,
    http_request,
)
from tests.support.servers.influxdb1 import InfluxDB1
from tests.support.servers.mosquitto import DEFAULT_MQTT_ACL, DEFAULT_MQTT_USERS, Mosquitto
from tests.support.servers.tls import TestCA
from tests.support.servers.victoriametrics import VictoriaMetrics

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
