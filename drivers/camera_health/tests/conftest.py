"""The core's real-server fixtures (mosquitto for the ops-bus state test)."""

from tests.conftest import mosquitto, tls_ca  # noqa: F401
