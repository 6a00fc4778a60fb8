"""gateway/mqtt/client.py's changes to paho's hot path, checked against paho and a broker.

* ``_SharedTableProperties`` must decode and encode exactly as paho's ``Properties``;
* the PUBLISH fast path must hand over topic, payload, flags and MQTT 5 properties;
* ``ack_all`` (one write of many PUBACKs) must acknowledge exactly the messages given:
  on a persistent session the broker redelivers precisely the ones left unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt._packet as paho_packet
import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config.models import MqttSection
from gateway.mqtt.client import Message, MqttConnection
from gateway.mqtt.paho_speedups import _SharedTableProperties
from tests.support.servers import LOOPBACK, Mosquitto

utf8 = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
               max_size=20)
publish_properties = st.fixed_dictionaries({}, optional={
    "PayloadFormatIndicator": st.integers(0, 1),
    "MessageExpiryInterval": st.integers(0, 2**32 - 1),
    "ContentType": utf8,
    "ResponseTopic": utf8,
    "CorrelationData": st.binary(max_size=20),
    "TopicAlias": st.integers(1, 65535),
    "UserProperty": st.lists(st.tuples(utf8, utf8), min_size=1, max_size=3),
    "SubscriptionIdentifier": st.lists(st.integers(1, 268435455), min_size=1, max_size=2),
})


def _received(props: Properties) -> dict[str, object]:
    return {k: v for k, v in props.__dict__.items()
            if k not in ("packetType", "types", "names", "properties")}


@settings(max_examples=300, deadline=None)
@given(publish_properties, publish_properties)
def test_shared_table_properties_decode_and_encode_like_paho(
        first: dict[str, object], second: dict[str, object]) -> None:
    wire = []
    for values in (first, second):
        props = Properties(PacketTypes.PUBLISH)
        for name, value in values.items():
            setattr(props, name, value)
        wire.append(props.pack())
    theirs, ours = Properties(PacketTypes.PUBLISH), _SharedTableProperties(PacketTypes.PUBLISH)
    for data in wire:  # the second unpack must forget the first one's properties
        _, their_len = theirs.unpack(data)
        _, our_len = ours.unpack(data)
        assert our_len == their_len
        assert _received(ours) == _received(theirs)
        assert ours.pack() == theirs.pack() == data
        assert str(ours) == str(theirs) and ours.isEmpty() == theirs.isEmpty()


def test_paho_decodes_publish_properties_with_the_shared_tables() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "r/1"
    props.CorrelationData = b"\x01\x02"
    topic = b"cams/a/ev"
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", 7) + props.pack() + b"{}"
    packet = paho_packet.decode_publish(0x32, body, MQTTProtocolVersion.MQTTv5)
    assert paho_packet.Properties is _SharedTableProperties
    assert type(packet.properties) is _SharedTableProperties
    assert (packet.topic, packet.mid, packet.qos, packet.payload) == (topic, 7, 1, b"{}")
    # paho's Properties sets its attributes dynamically: no declaration for mypy to see
    assert getattr(packet.properties, "ResponseTopic", None) == "r/1"
    assert getattr(packet.properties, "CorrelationData", None) == b"\x01\x02"


# -- against a real broker -------------------------------------------------------------

def _settings(mosquitto: Mosquitto) -> MqttSection:
    return MqttSection(host=LOOPBACK, port=mosquitto.port, username="gw",
                       password="gw-secret", base_topic="compound/test", keepalive=10)


@contextlib.asynccontextmanager
async def _session(mosquitto: Mosquitto, client_id: str, inbox: asyncio.Queue[Message],
                   protocol: str = "auto", subscribe_qos: int = 1
                   ) -> AsyncIterator[MqttConnection]:
    settings = _settings(mosquitto).model_copy(update={"protocol": protocol})
    def on_message(batch: list[Message]) -> None:
        for message in batch:
            inbox.put_nowait(message)

    connection = MqttConnection(settings, client_id, persistent=True, manual_ack=True,
                                on_message=on_message)
    connection.subscribe("compound/acks/#", subscribe_qos)
    task = asyncio.create_task(connection.run())
    try:
        async with asyncio.timeout(20):
            await connection.wait_connected()
        yield connection
    finally:
        task.cancel()  # a clean DISCONNECT, queued behind any PUBACKs already queued
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _publish(mosquitto: Mosquitto, payloads: list[bytes], topic: str = "compound/acks/x",
             qos: int = 1) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"acks-publisher-{qos}",
                         protocol=paho.MQTTv5)
    client.username_pw_set("gw", "gw-secret")
    client.connect(LOOPBACK, mosquitto.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, p, qos=qos) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def _take(inbox: asyncio.Queue[Message], until: bytes) -> list[Message]:
    """Messages up to and including the one whose payload is ``until``."""
    got: list[Message] = []
    async with asyncio.timeout(20):
        while not got or got[-1].payload != until:
            got.append(await inbox.get())
    return got


async def test_ack_all_acknowledges_exactly_the_messages_given(mosquitto: Mosquitto) -> None:
    payloads = [f"m{i}".encode() for i in range(600)]
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    async with _session(mosquitto, "acks-subscriber", inbox):
        pass  # creates the persistent session and its subscription
    await asyncio.to_thread(_publish, mosquitto, [*payloads, b"end-1"])
    async with _session(mosquitto, "acks-subscriber", inbox) as connection:
        first = await _take(inbox, b"end-1")
        assert [m.payload for m in first] == [*payloads, b"end-1"]
        acked = [m for i, m in enumerate(first) if i % 3 != 0]
        assert connection.ack_all(acked) == len(acked)
    # Reconnect: the broker must redeliver the unacknowledged third, and nothing else,
    # before a message published after the reconnect.
    async with _session(mosquitto, "acks-subscriber", inbox) as connection:
        await asyncio.to_thread(_publish, mosquitto, [b"end-2"])
        second = await _take(inbox, b"end-2")
        redelivered = [m.payload for m in second[:-1]]
        assert redelivered == [m.payload for i, m in enumerate(first) if i % 3 == 0]
        assert all(m.dup for m in second[:-1])
        assert connection.ack_all(second) == len(second)
    async with _session(mosquitto, "acks-subscriber", inbox):
        await asyncio.to_thread(_publish, mosquitto, [b"end-3"])
        assert [m.payload for m in await _take(inbox, b"end-3")] == [b"end-3"]


async def test_ack_all_skips_messages_of_an_older_connection(mosquitto: Mosquitto) -> None:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    async with _session(mosquitto, "acks-generation", inbox) as connection:
        stale = Message("compound/acks/x", b"old", 1, False, False, 1,
                        connection.generation - 1)
        assert connection.ack_all([stale]) == 0
        assert connection.stats.acks_skipped == 1


async def test_fast_path_delivers_over_mqtt_3_1_1(mosquitto: Mosquitto) -> None:
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    async with _session(mosquitto, "acks-v311", inbox, protocol="3.1.1") as connection:
        await asyncio.to_thread(_publish, mosquitto, [b"v311"])
        message = (await _take(inbox, b"v311"))[-1]
        assert (message.topic, message.qos, message.response_topic) == (
            "compound/acks/x", 1, None)
        assert connection.ack_all([message]) == 1


async def test_qos_2_goes_through_paho_and_is_completed_by_ack_all(
        mosquitto: Mosquitto) -> None:
    """QoS 2 keeps paho's PUBREC/PUBREL flow: delivered once, completed (PUBCOMP) by our
    acknowledgement, not delivered again after a reconnect."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()

    async with _session(mosquitto, "acks-qos2", inbox, subscribe_qos=2) as connection:
        await asyncio.to_thread(_publish, mosquitto, [b"exactly-once"], "compound/acks/q2", 2)
        message = (await _take(inbox, b"exactly-once"))[-1]
        assert (message.topic, message.qos) == ("compound/acks/q2", 2)
        assert connection.ack_all([message]) == 1
    async with _session(mosquitto, "acks-qos2", inbox, subscribe_qos=2):
        await asyncio.to_thread(_publish, mosquitto, [b"after-qos2"])
        assert [m.payload for m in await _take(inbox, b"after-qos2")] == [b"after-qos2"]


async def test_a_failure_in_pahos_network_thread_is_logged_once_and_reconnects(
        mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """paho re-raises an exception from inside its network thread (a callback, a bug in
    a read), and the thread ended with it: printed to stderr, no on_disconnect, and
    the link stayed "connected" and received nothing. Now the connection logs it once
    with its traceback, counts it and reconnects; the unacknowledged message comes
    again on the new connection."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    async with _session(mosquitto, "acks-thread-dies", inbox) as connection:
        client = connection._client
        assert client is not None and client.publish_sink is not None

        def explode(packet: Any) -> None:
            raise RuntimeError("bug in a callback")

        client.publish_sink = explode  # this connection's client only
        await asyncio.to_thread(_publish, mosquitto, [b"survives"])
        message = (await _take(inbox, b"survives"))[-1]
        assert connection.stats.network_failures == 1
        assert connection.stats.connects == 2
        assert connection.ack_all([message]) == 1
    failed = [r for r in caplog.records if "network thread failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelname == "ERROR", failed
    assert failed[0].exc_info is not None


def test_broker_connections_send_small_packets_at_once() -> None:
    """TCP_NODELAY on the broker socket (an alarm's two publishes would otherwise wait for
    a delayed ACK: bench/bench_alarm_latency.py)."""
    import socket

    from gateway.mqtt.client import set_no_delay

    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        set_no_delay(None, None, sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    set_no_delay(None, None, object())  # a transport without socket options: left alone
