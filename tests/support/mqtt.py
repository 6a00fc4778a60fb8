"""The MQTT client of the tests: paho (MQTT 5), its network loop in paho's thread.

The one test module that imports paho for a test client. It is a ``paho.Client``, so a
test may still set ``on_message`` or publish with properties, and adds what tests kept
writing by hand:

* :meth:`TestClient.subscribe` returns once the broker's SUBACK is in, and fails when the
  broker refused the subscription (an ACL, a bad filter): no ``sleep`` after subscribing
  hoping the subscription is active before the message under test is published;
* the constructor returns once the CONNACK is in (connected, or fails with the reason);
* every message is kept (``messages``; :meth:`on`, :meth:`under`) unless the test sets
  its own ``on_message``; PUBACK reason codes by mid in ``acks``.

Broker-side it is an ordinary client: it proves nothing about the gateway's own MQTT code
(gateway/mqtt/client.py), which tests exercise separately.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.servers.common import LOOPBACK
from tests.support.servers.mosquitto import Mosquitto
from tests.support.wait import eventually_sync

WAIT = 15.0
"""Hang guard (seconds) for the CONNACK and each SUBACK."""

Subscription = str | tuple[str, int] | list[tuple[str, int]]

__all__ = ["Message", "Properties", "TestClient", "connect", "mqtt_config", "publish_properties",
           "watch"]

Message = paho.MQTTMessage


class TestClient(paho.Client):
    """A connected MQTT 5 client whose subscribe waits for the SUBACK.

    A subclass must not name a method ``_on_message`` (or ``_on_<any callback>``): paho
    keeps its callbacks in those attributes and its ``__init__`` sets them to None."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, port: int, user: str | None = None, password: str | None = None, *,
                 client_id: str = "", host: str = LOOPBACK, keep: bool = True,
                 connect: bool = True, refusals_ok: bool = False) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5)
        if user is not None:
            self.username_pw_set(user, password)
        self.messages: list[tuple[str, bytes, bool]] = []
        """(topic, payload, retain) of every message, while ``on_message`` is ours."""
        self.acks: dict[int, ReasonCode] = {}
        """mid -> the broker's PUBACK reason code (MQTT 5 says when the ACL refused)."""
        self.refused: list[tuple[Any, list[ReasonCode]]] = []
        """Subscriptions the broker refused, when ``refusals_ok`` (else they fail)."""
        self.refusals_ok = refusals_ok
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._lock = threading.Condition()
        self._connack: ReasonCode | None = None
        if keep:
            self.on_message = self._keep
        self.on_publish = self._puback
        self.on_subscribe = self._suback
        self.on_connect = self._connected
        if connect:
            self.connect(host, port)
            self.loop_start()
            self.wait_connected()

    # -- paho callbacks (paho's thread) ------------------------------------------------

    def _keep(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def _puback(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                properties: Properties | None) -> None:
        with self._lock:
            self.acks[mid] = reason
            self._lock.notify_all()

    def _suback(self, client: paho.Client, userdata: Any, mid: int,
                reasons: list[ReasonCode], properties: Properties | None) -> None:
        with self._lock:
            self._subacks[mid] = list(reasons)
            self._lock.notify_all()

    def _connected(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                   properties: Properties | None) -> None:
        with self._lock:
            self._connack = reason
            self._lock.notify_all()

    # -- what tests call --------------------------------------------------------------

    def wait_connected(self, within: float = WAIT) -> None:
        """Return once the broker accepted the connection; fail with its reason if not."""
        with self._lock:
            if not self._lock.wait_for(lambda: self._connack is not None, within):
                raise AssertionError(f"no CONNACK within {within:g} s")
            reason = self._connack
        assert reason is not None
        if reason.is_failure:
            raise AssertionError(f"broker refused the connection: {reason}")

    def subscribe(self, topic: Any, qos: int = 1, options: Any = None,
                  properties: Properties | None = None) -> tuple[paho.MQTTErrorCode, int | None]:
        """Subscribe and return once the SUBACK is in; fail when any filter was refused
        (unless ``refusals_ok``). QoS 1 unless told: tests want every message."""
        result, mid = super().subscribe(topic, qos, options, properties)
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise AssertionError(f"subscribe {topic!r} not sent: {paho.error_string(result)}")
        with self._lock:
            if not self._lock.wait_for(lambda: mid in self._subacks, WAIT):
                raise AssertionError(f"no SUBACK for {topic!r} within {WAIT:g} s")
            reasons = self._subacks.pop(mid)
        refused = [r for r in reasons if r.is_failure]
        if refused and not self.refusals_ok:
            raise AssertionError(f"broker refused subscription {topic!r}: {refused}")
        if refused:
            self.refused.append((topic, refused))
        return result, mid

    def puback(self, mid: int, within: float = WAIT) -> ReasonCode:
        """The broker's PUBACK reason code for QoS 1 publish ``mid``."""
        with self._lock:
            if not self._lock.wait_for(lambda: mid in self.acks, within):
                raise AssertionError(f"no PUBACK for message {mid} within {within:g} s")
            return self.acks[mid]

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on ``topic``, oldest first."""
        return [p for t, p, _ in self.messages if t == topic]

    def under(self, prefix: str) -> list[str]:
        """Topics of the messages received below ``prefix``."""
        return [t for t, _, _ in self.messages if t.startswith(prefix)]

    def close(self) -> None:
        self.loop_stop()
        self.disconnect()


def connect(broker: Mosquitto, user: str = "gw", *, client_id: str = "",
            keep: bool = True) -> TestClient:
    """A client of ``broker``'s plain listener as ``user`` (password from the broker)."""
    return TestClient(broker.port, user, broker.users[user], client_id=client_id, keep=keep)


def publish_properties(*, correlation: bytes | None = None, response_topic: str | None = None,
                       user: Sequence[tuple[str, str]] = ()) -> Properties:
    """MQTT 5 PUBLISH properties for a request (correlation data, response topic)."""
    props = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        props.CorrelationData = correlation
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if user:
        props.UserProperty = list(user)
    return props


def watch(broker: Mosquitto, *filters: str, user: str = "gw") -> TestClient:
    """A client keeping every message under ``filters`` (default ``compound/#``), the
    subscriptions active (SUBACK) when it is returned."""
    client = connect(broker, user)
    for topic_filter in filters or ("compound/#",):
        client.subscribe(topic_filter, 1)
    return client


def mqtt_config(path: Path, broker: Mosquitto, *, base: str, devices: str, sinks: str,
                extra_mqtt: str = "", tls: bool = True) -> None:
    port = broker.tls_port if tls else broker.port
    tls_line = f"  tls: {{ca_file: '{broker.ca_file}'}}\n" if tls else ""
    path.write_text(
        "gateway: {id: gw-mqtt, site: mqtt-site, data_dir: data}\n"
        "buffer: {flush_interval: 50ms}\n"
        f"sinks:\n{sinks}"
        "mqtt:\n"
        f"  host: 127.0.0.1\n  port: {port}\n{tls_line}"
        "  username: gw\n  password: gw-secret\n"
        f"  base_topic: {base}\n  client_id: {base.replace('/', '-')}\n{extra_mqtt}"
        f"devices:\n{devices}")


def retained(broker: Mosquitto, topic: str, user: str = "ops", timeout: float = 20.0) -> bytes:
    """The retained message on ``topic`` (the broker may still be coming back)."""
    client = eventually_sync(lambda: connect(broker, user), within=timeout,
                             ignore=(OSError,), what=f"connected to {broker}")
    try:
        client.subscribe(topic, 1)
        got = eventually_sync(lambda: [p for t, p, kept in client.messages if kept],
                              within=timeout, what=f"retained message on {topic}")
    finally:
        client.close()
    return got[-1]
