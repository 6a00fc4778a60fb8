"""The core's real-server fixtures (VictoriaMetrics) for the end-to-end test."""

from tests.conftest import victoria  # noqa: F401
