"""The only module that talks to paho-mqtt: one broker connection, bridged to asyncio.

Why paho-mqtt 2 and not aiomqtt: a QoS 1 event may be acknowledged to the broker only
after it is committed in the buffer. paho 2 has manual acknowledgement
(``Client(manual_ack=True)`` + ``client.ack(mid, qos)``); aiomqtt 2.x acknowledges before
handing the message over, so a crash between receipt and commit would lose it.

Why paho's network loop runs in its own thread: paho's loop handles TLS records still
buffered inside the SSL object, keepalive pings and partial packets; re-implementing that
on asyncio's ``add_reader`` misses buffered TLS data. The thread only moves bytes: every
callback is handed to the event loop, in batches (one ``call_soon_threadsafe`` per burst,
not per message), so all gateway logic stays single-threaded.

Reconnection is ours, not paho's (``reconnect_on_failure=False``): capped exponential
backoff with full jitter (gateway.backoff), a *generation* number per connection so an
acknowledgement is never sent on a newer connection for a message of an older one (the
broker redelivers those, flagged DUP), and ``on_connected`` hooks to re-publish retained
state. Subscriptions are re-sent after every connect (MQTT 5: retain handling "only if
new", so a resumed session does not re-deliver retained messages).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt._packet import PublishPacket
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.backoff import Backoff
from gateway.config.models import MqttSection
from gateway.config.types import secret_value
from gateway.errors import GatewayError
from gateway.mqtt.paho_speedups import PROPERTIES_SELF, GatewayClient
from gateway.problems import ProblemLog

log = logging.getLogger("iotgw.mqtt")

UNSUPPORTED_PROTOCOL = {132, 1}
"""CONNACK codes meaning "speak another protocol version" (MQTT 5 / 3.1.1)."""
AUTH_FAILURES = {4, 5, 134, 135, 138}
MAX_UNACKED = 10_000
BARRIER_FILTER = "iotgw/no-such-subscription"
"""Unsubscribed at a clean disconnect, as a round trip (see ``MqttConnection._processed``)."""


class MqttError(GatewayError):
    """The broker connection failed or refused us; retryable (brokers come back)."""

    retryable = True


class Message(NamedTuple):
    """An incoming PUBLISH, detached from paho. ``generation`` says which connection
    delivered it: acknowledgements only go back on that same connection. (A tuple: one
    is built per message in paho's thread, at up to tens of thousands per second.)"""

    topic: str
    payload: bytes | bytearray  # paho decodes into a bytearray
    qos: int
    retain: bool
    dup: bool
    mid: int
    generation: int
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass
class ConnectionStats:
    connects: int = 0
    disconnects: int = 0
    received: int = 0
    published: int = 0
    queued_dropped: int = 0
    acks_skipped: int = 0
    publish_refused: int = 0
    """QoS 1 publishes the broker answered with a failure (MQTT 5), e.g. the ACL."""
    network_failures: int = 0
    """paho's network thread ended by an exception (logged once; the link reconnects)."""
    last_error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Will:
    """The last will, registered with the broker at every connect. ``payload`` is called
    then, not once: a will built at start carried the config hash of before a reload and
    a time earlier than the birth message (outside probe). MQTT cannot change the will of
    a live connection, so a reload shows in the will from the next connect on."""

    topic: str
    payload: Callable[[], bytes]
    qos: int = 1
    retain: bool = True


class Subscription(NamedTuple):
    qos: int
    retain_as_published: bool = False
    """MQTT 5: deliver the RETAIN flag as the publisher set it (else a broker clears it on
    live delivery, and a retained message is indistinguishable from a plain one)."""


class MqttConnection:
    """One client id, one session. ``run()`` connects and reconnects until cancelled.

    ``persistent=True`` asks for a session that survives disconnects and restarts
    (MQTT 5 ``clean_start=False`` + session expiry, 3.1.1 ``clean_session=False``):
    the broker queues QoS 1 messages meanwhile.
    """

    def __init__(self, settings: MqttSection, client_id: str, *,
                 on_message: Callable[[list[Message]], None],
                 persistent: bool = False, session_expiry: int = 7 * 86400,
                 will: Will | None = None, manual_ack: bool = False,
                 receive_maximum: int = 2000, max_queued: int = 1000,
                 on_connected: Callable[[], Awaitable[None]] | None = None,
                 gather: float = 0.0) -> None:
        self.settings = settings
        self.client_id = client_id
        self.persistent = persistent
        self.session_expiry = session_expiry
        self.will = will
        self.manual_ack = manual_ack
        self.receive_maximum = receive_maximum
        self.stats = ConnectionStats()
        self.generation = 0
        self.session_present = False
        self.protocol: MQTTProtocolVersion = (
            MQTTProtocolVersion.MQTTv311 if settings.protocol == "3.1.1"
            else MQTTProtocolVersion.MQTTv5)
        self._on_message = on_message
        self._on_connected = on_connected
        self._gather = gather
        self._subscriptions: dict[str, Subscription] = {}
        self._client: GatewayClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: collections.deque[Message] = collections.deque()
        self._inbox_scheduled = False
        self._inbox_lock = threading.Lock()
        self._connected = asyncio.Event()
        self._lost: asyncio.Event = asyncio.Event()
        self._connack: asyncio.Future[tuple[int, bool]] | None = None
        self._queue: collections.deque[tuple[str, bytes, int, bool]] = collections.deque(
            maxlen=max_queued)
        self._barriers: dict[int, asyncio.Future[None]] = {}
        self._unacked: dict[tuple[int, int], str] = {}
        """(client generation, mid) -> topic of a QoS 1/2 publish awaiting its PUBACK."""
        self._problems = ProblemLog(log)

    # -- public API ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def subscribe(self, topic_filter: str, qos: int, *,
                  retain_as_published: bool = False) -> None:
        """Remember the filter (re-sent after every connect) and subscribe now if we can.
        ``retain_as_published``: see :class:`Subscription` (MQTT 5 only; a 3.1.1 broker
        always clears RETAIN on live delivery)."""
        earlier = self._subscriptions.get(topic_filter)
        wanted = Subscription(max(qos, earlier.qos if earlier else 0), retain_as_published)
        self._subscriptions[topic_filter] = wanted
        if self.connected and self._client is not None:
            self._send_subscribe(self._client, [(topic_filter, wanted)])

    def subscriptions(self) -> list[str]:
        """The filters this connection subscribes to (and re-sends after a connect)."""
        return list(self._subscriptions)

    def unsubscribe(self, topic_filter: str) -> None:
        if self._subscriptions.pop(topic_filter, None) is not None and self.connected:
            assert self._client is not None
            self._client.unsubscribe(topic_filter)

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, *,
                queue: bool = True, correlation_data: bytes | None = None) -> bool:
        """Publish now, or keep it in the bounded queue while disconnected.

        Returns False when the message was dropped (counted): the queue is for live
        values and events; retained state is re-published by ``on_connected`` anyway.
        ``correlation_data`` (MQTT 5) answers a request that carried it."""
        data = payload.encode() if isinstance(payload, str) else payload
        properties = None
        if correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation_data
        client = self._client
        if client is not None and self.connected:
            info = client.publish(topic, data, qos=qos, retain=retain, properties=properties)
            if qos and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                if len(self._unacked) >= MAX_UNACKED:
                    self._unacked.clear()  # answers lost with a connection: forget them
                self._unacked[self.generation, info.mid] = topic
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.stats.published += 1
                return True
        if not queue:
            self.stats.queued_dropped += 1
            return False
        if len(self._queue) == self._queue.maxlen:
            self.stats.queued_dropped += 1
        self._queue.append((topic, data, qos, retain))
        return True

    def ack_all(self, messages: Sequence[Message]) -> int:
        """Acknowledge a burst on the connection that delivered it, QoS 1 PUBACKs in one
        write; returns how many were sent.

        A message of an older connection is skipped: the broker has already re-sent it
        (DUP) on the new one, and its old packet id there could name another message."""
        if not self.manual_ack:
            return 0
        client = self._client if self.connected else None
        generation = self.generation if client is not None else None
        mids: list[int] = []
        completed = 0
        for message in messages:
            if not message.qos:
                continue
            if client is None or message.generation != generation:
                self.stats.acks_skipped += 1
            elif message.qos == 1:
                mids.append(message.mid)
            else:
                client.ack(message.mid, 2)  # PUBCOMP
                completed += 1
        if mids and client is not None:
            client.ack_many(mids)
        return len(mids) + completed

    # -- connection loop -----------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                await self._connect_once()
                backoff.reset()
                await self._lost.wait()
            except MqttError as exc:
                self.stats.last_error = str(exc)
                self._problems.report("connect", f"mqtt {self.client_id}: {exc}",
                                      level=logging.WARNING)
            except BaseException:
                await self._teardown(disconnect=True)
                raise
            await self._teardown()
            await asyncio.sleep(backoff.next())

    async def _connect_once(self) -> None:
        s = self.settings
        client = self._make_client()
        self._lost.clear()
        assert self._loop is not None  # set by run(), the only caller
        self._connack = self._loop.create_future()
        props: Properties | None = None
        clean_start: Any = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry if self.persistent else 0
            props.ReceiveMaximum = self.receive_maximum
            clean_start = not self.persistent
        self._client = client
        try:
            await asyncio.to_thread(client.connect, s.host, s.port, max(5, int(s.keepalive)),
                                    clean_start=clean_start, properties=props)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise MqttError(f"cannot connect to {s.host}:{s.port}: {exc}") from exc
        client.loop_start()
        try:
            async with asyncio.timeout(max(10.0, s.keepalive)):
                code, session_present = await self._connack
        except TimeoutError:
            raise MqttError(f"no CONNACK from {s.host}:{s.port}") from None
        if code in UNSUPPORTED_PROTOCOL and s.protocol == "auto" and \
                self.protocol == MQTTProtocolVersion.MQTTv5:
            log.warning("broker %s does not speak MQTT 5; falling back to 3.1.1", s.host)
            self.protocol = MQTTProtocolVersion.MQTTv311
            raise MqttError("retrying with MQTT 3.1.1")
        if code != 0:
            kind = "not authorised" if code in AUTH_FAILURES else "refused"
            raise MqttError(f"broker {s.host}:{s.port} {kind} us ({paho.connack_string(code)}"
                            f" / code {code})")
        self.session_present = session_present
        self.stats.connects += 1
        self._connected.set()
        self._problems.recovered("connect", f"mqtt {self.client_id}: connected again")
        log.info("mqtt %s connected to %s:%d (MQTT %s, session %s)", self.client_id, s.host,
                 s.port, "5" if self.protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1",
                 "resumed" if session_present else "new")
        if self._subscriptions:
            self._send_subscribe(client, list(self._subscriptions.items()))
        while self._queue and self.connected:
            topic, data, qos, retain = self._queue.popleft()
            self.publish(topic, data, qos, retain)
        if self._on_connected is not None:
            await self._on_connected()

    async def _teardown(self, disconnect: bool = False) -> None:
        was_connected = self.connected
        self._connected.clear()
        client, self._client = self._client, None
        if client is None:
            return
        if was_connected:
            self.stats.disconnects += 1
        if disconnect and was_connected:
            await self._processed(client, within=2.0)
            client.disconnect()  # a clean DISCONNECT: the broker does not send the will
        await asyncio.to_thread(client.loop_stop)

    async def _processed(self, client: paho.Client, within: float) -> None:
        """Until the broker has processed everything sent so far (bounded): an UNSUBSCRIBE
        of a filter we never had, answered by UNSUBACK after the packets before it.

        Disconnecting right after acknowledging a burst lost some of its PUBACKs (about 4
        runs in 10 at first, then 1 in 10 under load after waiting for paho to write
        them; tests/test_mqtt_client.py): the broker then redelivered messages that were
        committed and acknowledged. MQTT has no flush; this round trip is one."""
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        rc, mid = client.unsubscribe(BARRIER_FILTER)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return
        self._barriers[mid] = done
        try:
            async with asyncio.timeout(within):
                await done
        except TimeoutError:
            log.warning("mqtt %s: the broker did not confirm the last acknowledgements "
                        "within %.0f s before disconnecting; it may send some again",
                        self.client_id, within)
        finally:
            self._barriers.pop(mid, None)

    def _paho_unsubscribed(self, client: paho.Client, userdata: Any, mid: int, reasons: Any,
                           properties: Any) -> None:
        self._call(self._barrier_reached, mid)

    def _barrier_reached(self, mid: int) -> None:
        done = self._barriers.get(mid)
        if done is not None and not done.done():
            done.set_result(None)

    def _make_client(self) -> GatewayClient:
        s = self.settings
        v5 = self.protocol == MQTTProtocolVersion.MQTTv5
        client = GatewayClient(
            CallbackAPIVersion.VERSION2, client_id=self.client_id,
            clean_session=None if v5 else not self.persistent, protocol=self.protocol,
            reconnect_on_failure=False, manual_ack=self.manual_ack)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, secret_value(s.password))
        if s.tls is not None:
            client.tls_set(
                ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                keyfile=str(s.tls.key_file) if s.tls.key_file else None)
            client.tls_insecure_set(s.tls.insecure)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload(), self.will.qos,
                            self.will.retain)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.publish_sink = self._paho_publish
        client.on_message = self._paho_message  # QoS 2 only
        client.on_publish = self._paho_published
        client.on_unsubscribe = self._paho_unsubscribed
        client.on_socket_open = set_no_delay
        client.on_network_failure = partial(self._paho_thread_failed, client)
        return client

    def _send_subscribe(self, client: paho.Client,
                        items: list[tuple[str, Subscription]]) -> None:
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            client.subscribe([(t, SubscribeOptions(qos=o.qos, retainHandling=1,
                                                   retainAsPublished=o.retain_as_published))
                              for t, o in items])
        else:
            client.subscribe([(t, o.qos) for t, o in items])

    # -- paho thread callbacks: hand over to the event loop, nothing else ----------

    def _paho_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                      properties: Any) -> None:
        code = reason.value if hasattr(reason, "value") else int(reason)
        present = bool(getattr(flags, "session_present", False))
        if code == 0:
            # Here, in paho's thread, so every PUBLISH after this CONNACK carries it.
            self.generation += 1
        self._call(self._set_connack, code, present)

    def _set_connack(self, code: int, present: bool) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((code, present))

    def _paho_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                         properties: Any) -> None:
        self._call(self._set_lost, client, str(reason))

    def _paho_thread_failed(self, client: paho.Client, exc: BaseException) -> None:
        """In paho's thread, which is ending: the event loop logs it and reconnects."""
        self._call(self._network_failed, client, exc)

    def _network_failed(self, client: paho.Client, exc: BaseException) -> None:
        if client is not self._client:
            return
        self.stats.network_failures += 1
        self._problems.report("network-thread", f"mqtt {self.client_id}: paho's network "
                              f"thread failed: {type(exc).__name__}: {exc}; reconnecting",
                              exc_info=exc, kind="failed")
        self._connected.clear()  # logged above: no second "connection lost" line
        self._set_lost(client, f"network thread failed: {type(exc).__name__}")

    def _set_lost(self, client: paho.Client, reason: str) -> None:
        if client is not self._client:
            return
        if self.connected:
            self._problems.report("lost", f"mqtt {self.client_id}: connection lost ({reason})",
                                  level=logging.WARNING)
        self._connected.clear()
        self._lost.set()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(f"connection closed: {reason}"))

    def _paho_published(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                        properties: Any) -> None:
        key = (self.generation, mid)
        if getattr(reason, "is_failure", False):
            # Looked up on the event loop: there, publish() has recorded the topic.
            self._call(self._refused, key, str(reason))
        else:
            self._unacked.pop(key, None)  # one dict operation: atomic under the GIL

    def _refused(self, key: tuple[int, int], reason: str) -> None:
        """A broker refusal is a configuration problem (mostly the ACL): said once per
        topic root, every one counted (ops ``stats``)."""
        self.stats.publish_refused += 1
        topic = self._unacked.pop(key, "?")
        root = topic.split("/", 1)[0]
        self._problems.report(f"refused:{root}", f"mqtt {self.client_id}: the broker refused "
                              f"publishes under {root}/ ({reason}); check its ACL")

    def _paho_publish(self, packet: PublishPacket) -> None:
        """QoS 0 and 1, straight from paho's decoder (see ``GatewayClient``)."""
        # A broker checks topics are UTF-8; should one not be, it is unrouted and acked.
        self._deliver(packet.topic.decode("utf-8", "replace"), packet.payload, packet.qos,
                      packet.retain, packet.dup, packet.mid, packet.properties)

    def _paho_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """QoS 2, through paho's own PUBREC/PUBREL flow (delivered after PUBREL; our
        ``ack`` sends the PUBCOMP after the commit)."""
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "\ufffd"
        self._deliver(topic, msg.payload, msg.qos, msg.retain, bool(msg.dup), msg.mid,
                      getattr(msg, "properties", None))

    def _deliver(self, topic: str, payload: bytes | bytearray, qos: int, retain: bool, dup: bool,
                 mid: int, props: Properties | None) -> None:
        response = correlation = None
        user: tuple[tuple[str, str], ...] = ()
        if props is not None and props.__dict__.keys() - PROPERTIES_SELF:
            response = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
            user = tuple(getattr(props, "UserProperty", ()) or ())
        message = Message(topic, payload, qos, retain, dup, mid, self.generation, response,
                          correlation, user)
        with self._inbox_lock:
            self._inbox.append(message)
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        self._call(self._gather_inbox if self._gather > 0 else self._drain_inbox)

    def _gather_inbox(self) -> None:
        """First message of a burst: let the burst grow for ``gather`` seconds, so the
        event loop is woken, and the pipeline fed, once per burst and not per message."""
        assert self._loop is not None
        self._loop.call_later(self._gather, self._drain_inbox)

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            batch = list(self._inbox)
            self._inbox.clear()
            self._inbox_scheduled = False
        self.stats.received += len(batch)
        if batch:
            self._on_message(batch)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop shutting down
                pass


def set_no_delay(client: Any, userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: TCP_NODELAY on the broker connection (paho leaves Nagle
    on). With Nagle, a small publish sent right after another waits for the broker's ACK
    of the first, which Linux may delay by up to 40 ms: an alarm's retained state and its
    event are two such publishes, and bench/bench_alarm_latency.py showed the second
    arriving 40-45 ms late at p99 (docs/benchmarks.md). Every publish here is a whole
    MQTT packet already, so nothing is gained by coalescing them in the kernel."""
    setsockopt = getattr(sock, "setsockopt", None)  # a websocket wrapper has none
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def topic_matches(subscription: str, topic: str) -> bool:
    """MQTT filter matching (``+``, ``#``), paho's own."""
    return bool(paho.topic_matches_sub(subscription, topic))


def client_id_base(settings: MqttSection, gateway_id: str) -> str:
    return settings.client_id or f"iotgw-{gateway_id}"
