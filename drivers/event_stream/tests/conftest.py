"""The core's real-server fixtures (VictoriaMetrics, InfluxDB 1.x) for the end-to-end
tests."""

from tests.conftest import influx1, victoria  # noqa: F401
