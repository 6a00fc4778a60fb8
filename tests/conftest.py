"""Shared fixtures: real servers on free loopback ports (tests/support/servers/).

Session fixtures are shared by every test, so tests must use unique measurement / tag /
database / topic names and must not stop them. A test that stops, restarts, pauses or
reconfigures a server takes a private one from a ``*_factory`` fixture instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gate_driver import test_gate_driver  # noqa: F401 - a fixture, by name
from tests.support.servers import (
    DEFAULT_MQTT_ACL,
    DEFAULT_MQTT_USERS,
    InfluxDB1,
    Mosquitto,
    TestCA,
    VictoriaMetrics,
)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """One test CA for the session: every Mosquitto from these fixtures trusts it."""
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    with VictoriaMetrics(tmp_path_factory.mktemp("victoria")) as server:
        yield server


@pytest.fixture(scope="session")
def influx1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB1]:
    """InfluxDB 1.x without auth; use ``influx1_factory(username=..., password=...)``."""
    with InfluxDB1(tmp_path_factory.mktemp("influx1")) as server:
        yield server


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, tls_ca: TestCA) -> Iterator[Mosquitto]:
    """Users gw and ops (passwords in ``.users``), DEFAULT_MQTT_ACL, plain + TLS listeners."""
    with Mosquitto(
        tmp_path_factory.mktemp("mosquitto"),
        users=DEFAULT_MQTT_USERS,
        acl=DEFAULT_MQTT_ACL,
        ca=tls_ca,
    ) as server:
        yield server


def _factory(cls: type[Any], base: Path, defaults: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    created: list[Any] = []

    def make(**kwargs: Any) -> Any:
        server = cls(base, **(defaults | kwargs))
        created.append(server)
        return server.start()

    yield make
    for server in reversed(created):
        server.stop()


@pytest.fixture
def victoria_factory(tmp_path: Path) -> Iterator[Callable[..., VictoriaMetrics]]:
    """``victoria_factory(**VictoriaMetrics kwargs)`` -> a started private instance."""
    yield from _factory(VictoriaMetrics, tmp_path, {})


@pytest.fixture
def influx1_factory(tmp_path: Path) -> Iterator[Callable[..., InfluxDB1]]:
    """``influx1_factory(**InfluxDB1 kwargs)`` -> a started private instance."""
    yield from _factory(InfluxDB1, tmp_path, {})


@pytest.fixture
def mosquitto_factory(tmp_path: Path, tls_ca: TestCA) -> Iterator[Callable[..., Mosquitto]]:
    """``mosquitto_factory(**Mosquitto kwargs)`` -> a started private broker.

    Defaults match the session ``mosquitto`` (users, ACL, TLS with the session CA).
    """
    defaults = {"users": DEFAULT_MQTT_USERS, "acl": DEFAULT_MQTT_ACL, "ca": tls_ca}
    yield from _factory(Mosquitto, tmp_path, defaults)
