"""paho-mqtt's per-message costs taken out, measured one by one (docs/mqtt.md).

These reach into paho internals (``Client._handle_publish``, ``_sock_recv``,
``_packet_queue``, ``loop_read``, ``paho.mqtt._packet.decode_publish`` and
``Properties``' tables), so they live apart from the connection logic in
:mod:`gateway.mqtt.client`, paho is pinned to the minor version they were checked
against (``paho-mqtt>=2.2,<2.3``), and tests/test_paho_speedups.py fails when any patched
private signature or attribute changes, before a silent misbehaviour could.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt._packet as paho_packet
import paho.mqtt.client as paho
from paho.mqtt._packet import PublishPacket, decode_publish
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PROPERTIES_SELF = frozenset({"packetType", "types", "names", "properties"})
"""paho ``Properties`` bookkeeping attributes; any other attribute is a received property."""
_PUBACK = struct.Struct("!BBH")
_PUBACK_COMMAND = PacketTypes.PUBACK << 4
_QOS_2 = 0x04  # QoS bits of a PUBLISH fixed header (0x06 mask) for QoS 2


class _SharedTableProperties(Properties):
    """paho's ``Properties`` built without rebuilding its lookup tables every time.

    paho's ``__init__`` builds three tables (27 names, 27 property types, 7 type names)
    per instance and ``clear`` walks them all, for every MQTT 5 packet it decodes: in a
    QoS 1 flood that was 13% of the gateway's CPU (py-spy, bench/bench_mqtt.py). Here
    the tables are built once and shared (paho only reads them after ``__init__``) and
    ``clear`` deletes only what was set. Behaviour is paho's own: every other method is
    inherited; tests/test_mqtt_client.py checks unpack and pack against paho's class.
    Installed for paho's packet decoder only (``paho.mqtt._packet``)."""

    _TABLES = Properties(PacketTypes.PUBLISH)

    def __init__(self, packetType: int) -> None:
        own = self.__dict__
        own["packetType"] = packetType
        own["types"] = self._TABLES.types
        own["names"] = self._TABLES.names
        own["properties"] = self._TABLES.properties

    def clear(self) -> None:
        own = self.__dict__
        for name in [key for key in own if key not in PROPERTIES_SELF]:
            del own[name]


# Rebinding the name in paho's module namespace: its decoder looks ``Properties`` up there
# at call time. (An attribute assignment would be refused by the checker, which treats a
# class name as a constant; the namespace is a plain dict.)
vars(paho_packet)["Properties"] = _SharedTableProperties


class _WithoutOpenSSL:
    """What paho's plain-TCP path names of ``ssl``, for a gateway running without it.

    paho imports ``ssl`` with a fallback to None, yet names ``ssl.SSLWantReadError`` and
    ``ssl.SSLWantWriteError`` in the except clauses of every socket read and write, TLS
    or not: without OpenSSL (gateway/openssl_gate.py) the first read that would block
    raised AttributeError in paho's network thread, which died; the link looked
    connected and received nothing. These classes are never raised, as on plain TCP.
    Installed only when paho has no ``ssl``; a config with TLS always has it (its
    ``tls_set`` still checks ``ssl is None`` first, which is then never the case)."""

    class SSLWantReadError(OSError):
        pass

    class SSLWantWriteError(OSError):
        pass


if vars(paho)["ssl"] is None:
    vars(paho)["ssl"] = _WithoutOpenSSL


class GatewayClient(paho.Client):
    """paho's Client with the per-message costs of a QoS 1 flood taken out; paho still
    does all MQTT framing, decoding, TLS and keepalive.

    Measured with bench/bench_mqtt.py (docs/mqtt.md), each one a hot spot in py-spy:

    * read-ahead: one ``recv(64 KiB)`` instead of paho's recv(1) command, recv(1) per
      length byte, recv(<=2048) body, and every buffered packet handled per wake-up
      instead of one per ``select``;
    * PUBLISH (QoS 0/1) handed over as paho's own decoded ``PublishPacket`` to
      ``publish_sink``: paho's ``_handle_publish`` would also build an ``MQTTMessage``
      (a ``threading.Condition`` each), format a debug log line and walk its filtered-
      callback topic tree for every message, none of which the gateway uses. QoS 2
      keeps paho's own PUBREC/PUBREL flow;
    * ``ack_many``: one queued write for a burst of PUBACKs instead of one
      queue entry, socket-pair wake-up and ``send`` per message.

    ``_sock_recv``, ``_handle_publish``, ``_packet_queue`` and ``_packet.decode_publish``
    are paho-internal but small and unchanged across 2.2.x (pinned ``paho-mqtt>=2.2,<3``);
    every tests/test_mqtt_*.py test runs through them."""

    READ_AHEAD = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = bytearray()
        self._would_block = False
        self.publish_sink: Callable[[PublishPacket], None] | None = None
        self.on_network_failure: Callable[[BaseException], None] | None = None
        """Called in paho's network thread when it dies of an exception."""

    def _thread_main(self) -> None:
        """paho's network thread, which an exception used to end silently (printed by
        ``threading.excepthook``, not logged; no ``on_disconnect``): the connection
        looked up and received nothing. paho re-raises a callback's exception
        (``suppress_exceptions`` is off) and any bug in a read ends here too; the hook
        lets the connection log it once, count it and reconnect."""
        try:
            super()._thread_main()
        except Exception as exc:
            hook = self.on_network_failure
            if hook is None:
                raise
            hook(exc)

    def _handle_publish(self) -> MQTTErrorCode:
        sink = self.publish_sink
        command = self._in_packet["command"]
        if sink is None or command & 0x06 == _QOS_2:
            return super()._handle_publish()
        packet = decode_publish(command, self._in_packet["packet"], self._protocol)
        sink(packet)
        if packet.qos == 1 and not self._manual_ack:
            return self._send_puback(packet.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Sequence[int]) -> MQTTErrorCode:
        """PUBACK every packet id in one write (MQTT 5 allows the 2-byte form for
        success without properties, as paho's own ``ack`` sends it)."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        data = b"".join([_PUBACK.pack(_PUBACK_COMMAND, 2, mid) for mid in mids])
        return self._packet_queue(_PUBACK_COMMAND, data, 0, 0)

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            try:
                data = super()._sock_recv(self.READ_AHEAD)
            except BlockingIOError:
                self._would_block = True
                raise
            if len(data) <= bufsize:
                return data  # b"" is EOF: paho sees the connection closed
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Every packet available now (bounded by the broker's in-flight window, our
        receive maximum), not one: stop at the first "would block" with nothing buffered."""
        self._would_block = False
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        for _ in range(100_000):
            rc = super().loop_read(1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._would_block or self._sock is None:
                return rc
        return rc
