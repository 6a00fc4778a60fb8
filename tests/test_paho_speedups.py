"""The paho internals gateway/mqtt/paho_speedups.py relies on, pinned: a paho release
that changes any of them fails here, by name, instead of misbehaving under load.

The behaviour itself (decode, ack, QoS 2, read-ahead) is tested against a real broker in
tests/test_mqtt_client.py; this file only guards the seams."""

from __future__ import annotations

import inspect

import paho.mqtt._packet as paho_packet
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt.paho_speedups import GatewayClient, _SharedTableProperties

PATCHED_SIGNATURES = {
    (paho.Client, "_handle_publish"): "(self) -> 'MQTTErrorCode'",
    (paho.Client, "_sock_recv"): "(self, bufsize: 'int') -> 'bytes'",
    (paho.Client, "_packet_queue"): (
        "(self, command: 'int', packet: 'bytes | bytearray', mid: 'int', qos: 'int', "
        "info: 'MQTTMessageInfo | None' = None) -> 'MQTTErrorCode'"),
    (paho.Client, "loop_read"): "(self, max_packets: 'int' = 1) -> 'MQTTErrorCode'",
    (paho.Client, "_send_puback"): "(self, mid: 'int') -> 'MQTTErrorCode'",
    (paho.Client, "_thread_main"): "(self) -> 'None'",
    (Properties, "__init__"): "(self, packetType)",
    (Properties, "clear"): "(self)",
}


@pytest.mark.parametrize(("owner", "name"), list(PATCHED_SIGNATURES),
                         ids=[f"{o.__name__}.{n}" for o, n in PATCHED_SIGNATURES])
def test_patched_private_signature_unchanged(owner: type, name: str) -> None:
    assert str(inspect.signature(getattr(owner, name))) == PATCHED_SIGNATURES[(owner, name)]


def test_decoder_and_packet_shape_unchanged() -> None:
    assert str(inspect.signature(paho_packet.decode_publish)) == (
        "(header: 'int', packet: 'bytes | bytearray', protocol: 'MQTTProtocolVersion')"
        " -> 'PublishPacket'")
    assert list(paho_packet.PublishPacket.__annotations__) == [
        "dup", "qos", "retain", "topic", "mid", "properties", "payload"]
    assert paho_packet.Properties is _SharedTableProperties, "the decoder uses our tables"


def test_plain_socket_path_names_only_what_the_stand_in_for_ssl_has() -> None:
    """A gateway without OpenSSL gives paho ``_WithoutOpenSSL`` for ``ssl``: paho's
    socket read and write must name nothing else of it (the TLS-only paths never run
    there)."""
    import re

    from gateway.mqtt.paho_speedups import _WithoutOpenSSL

    named = {name for method in (paho.Client._sock_recv, paho.Client._sock_send)
             for name in re.findall(r"\bssl\.(\w+)", inspect.getsource(method))}
    assert named == {"SSLWantReadError", "SSLWantWriteError"}
    assert all(hasattr(_WithoutOpenSSL, name) for name in named)


def test_private_attributes_the_client_reads_exist() -> None:
    client = GatewayClient(CallbackAPIVersion.VERSION2, manual_ack=True)
    for attribute in ("_in_packet", "_manual_ack", "_protocol", "_sock"):
        assert hasattr(client, attribute), attribute
    assert {"command", "packet"} <= set(client._in_packet)
    tables = Properties(PacketTypes.PUBLISH)
    assert {"types", "names", "properties", "packetType"} <= set(vars(tables))
