"""Prove the real-server harness (tests/support/servers/) is real: data goes in over the same
protocols the gateway uses and comes back out exactly, auth and ACLs are enforced, TLS is
verified, and restarts keep port and data. If these fail, every test built on the
fixtures is suspect.
"""

from __future__ import annotations

import base64
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from influxdb_client import Point, WritePrecision
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.servers import (
    InfluxDB1,
    Mosquitto,
    ServerError,
    TestCA,
    VictoriaMetrics,
    free_port,
    http_request,
)

WAIT = 10.0  # hang guard only; every wait below returns as soon as the event happens


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- harness basics ---------------------------------------------------------------------


def test_free_port_is_unused_loopback_port_and_never_repeats() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # really free right now


def test_startup_failure_raises_with_log_tail(tmp_path: Path) -> None:
    server = VictoriaMetrics(tmp_path, extra_args=["-noSuchFlag=1"])
    with pytest.raises(ServerError, match="noSuchFlag"):
        server.start()
    assert not server.running


def test_first_start_moves_to_a_new_port_when_its_port_was_taken(tmp_path: Path) -> None:
    server = VictoriaMetrics(tmp_path)
    taken = server.port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        with server:
            assert server.port != taken
            assert server.url == f"http://127.0.0.1:{server.port}"
            assert "address already in use" in server.log_tail()


def test_pause_makes_server_hang_until_resume(
    victoria_factory: Callable[..., VictoriaMetrics],
) -> None:
    vm = victoria_factory()
    vm.pause()
    with pytest.raises(TimeoutError):
        http_request("GET", f"{vm.url}/health", timeout=0.3)
    vm.resume()
    assert http_request("GET", f"{vm.url}/health") == (200, b"OK")


# --- VictoriaMetrics ---------------------------------------------------------------------


async def test_victoria_roundtrip_via_influxdb_client(victoria: VictoriaMetrics) -> None:
    device = unique("dev")
    t0 = now_ms()
    points = [
        Point("meter").tag("device", device).tag("site", "north")
        .field("power", 1.5).field("energy", 42).field("online", True)
        .time(t0, WritePrecision.MS),
        Point("meter").tag("device", device).tag("site", "north")
        .field("power", -2.25).field("energy", 43).field("online", False)
        .time(t0 + 1500, WritePrecision.MS),
    ]
    async with InfluxDBClientAsync(url=victoria.url, token="any", org="any") as client:
        ok = await client.write_api().write(
            # [arg-type]: influxdb_client annotates the parameter as its WritePrecision class,
            # whose members are plain str constants
            bucket="ignored", record=points,
            write_precision=WritePrecision.MS,  # type: ignore[arg-type]
        )
    assert ok is True

    rows = victoria.export(f'{{device="{device}"}}')
    assert rows == [
        {
            "metric": {"__name__": "meter_energy", "device": device, "site": "north"},
            "values": [42, 43],
            "timestamps": [t0, t0 + 1500],
        },
        {
            "metric": {"__name__": "meter_online", "device": device, "site": "north"},
            "values": [1, 0],
            "timestamps": [t0, t0 + 1500],
        },
        {
            "metric": {"__name__": "meter_power", "device": device, "site": "north"},
            "values": [1.5, -2.25],
            "timestamps": [t0, t0 + 1500],
        },
    ]
    latest = victoria.query(f'meter_power{{device="{device}"}}')["data"]["result"]
    assert [r["value"][1] for r in latest] == ["-2.25"]


def test_victoria_ns_timestamps_are_truncated_to_ms_and_old_ones_kept(
    victoria: VictoriaMetrics,
) -> None:
    device = unique("dev")
    victoria.write_lines(
        [f"m,device={device} v=1 1700000000123456789", f"m,device={device} v=2 1700000000999999999"]
    )
    assert victoria.samples(f'{{device="{device}"}}') == {
        ("m_v", f"device={device}"): [(1700000000123, 1), (1700000000999, 2)]
    }


def test_victoria_dedup_collapses_identical_series_and_timestamp(
    victoria: VictoriaMetrics, victoria_factory: Callable[..., VictoriaMetrics]
) -> None:
    device = unique("dev")
    ts = now_ms()
    line = f"m,device={device} v=7 {ts}"
    plain = victoria_factory(dedup_interval=None)
    for server in (victoria, plain):
        server.write_lines(line, precision="ms")
        server.write_lines(line, precision="ms")  # a replayed batch
    assert victoria.samples(f'{{device="{device}"}}') == {("m_v", f"device={device}"): [(ts, 7)]}
    # Without the flag VictoriaMetrics keeps both: the flag is what makes replays idempotent.
    assert plain.samples(f'{{device="{device}"}}') == {
        ("m_v", f"device={device}"): [(ts, 7), (ts, 7)]
    }


def test_victoria_v1_write_db_parameter_becomes_a_label(victoria: VictoriaMetrics) -> None:
    """/write?db=x adds label db="x" (the v2 bucket does not): matters for the influxdb1 sink
    pointed at VictoriaMetrics."""
    device = unique("dev")
    ts = now_ms()
    status, _ = http_request(
        "POST", f"{victoria.url}/write", params={"db": "site1", "precision": "ms"},
        data=f"m,device={device} v=1 {ts}".encode(),
    )
    assert status == 204
    assert victoria.samples(f'{{device="{device}"}}') == {
        ("m_v", "db=site1", f"device={device}"): [(ts, 1)]
    }


def test_victoria_string_fields_are_stored_as_zero(victoria: VictoriaMetrics) -> None:
    """VictoriaMetrics 1.79 does not drop string fields: it stores them as the number 0."""
    device = unique("dev")
    ts = now_ms()
    victoria.write_lines(f'm,device={device} state="on",v=3 {ts}', precision="ms")
    assert victoria.samples(f'{{device="{device}"}}') == {
        ("m_state", f"device={device}"): [(ts, 0)],
        ("m_v", f"device={device}"): [(ts, 3)],
    }


def test_victoria_restart_keeps_port_and_data(
    victoria_factory: Callable[..., VictoriaMetrics],
) -> None:
    vm = victoria_factory()
    port, pid = vm.port, vm.pid
    ts = now_ms()
    vm.write_lines(f"m,device=r v=1 {ts}", precision="ms")
    vm.restart()
    assert (vm.port, vm.url) == (port, f"http://127.0.0.1:{port}")
    assert vm.pid != pid
    assert vm.samples('{device="r"}') == {("m_v", "device=r"): [(ts, 1)]}
    vm.stop()
    assert not vm.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    vm.start()
    assert vm.series_count('{device="r"}') == 1


# --- InfluxDB 1.x ------------------------------------------------------------------------


def test_influx1_write_and_select_all_field_types(influx1: InfluxDB1) -> None:
    db = unique("db")
    influx1.create_database(db)
    influx1.write_lines(
        db,
        [
            'meter,site=north power=1.5,energy=42i,state="on \\"ok\\"",online=true '
            "1700000000123456789",
            'meter,site=south power=-2.25,energy=7i,state="off",online=false 1700000001000000001',
        ],
    )
    rows = influx1.select("SELECT power, energy, state, online, site FROM meter", db)
    assert rows == [
        {"time": 1700000000123456789, "power": 1.5, "energy": 42, "state": 'on "ok"',
         "online": True, "site": "north"},
        {"time": 1700000001000000001, "power": -2.25, "energy": 7, "state": "off",
         "online": False, "site": "south"},
    ]


def test_influx1_same_series_and_timestamp_overwrites(influx1: InfluxDB1) -> None:
    db = unique("db")
    influx1.create_database(db)
    influx1.write_lines(db, "m,d=a v=1 1700000000000000000")
    influx1.write_lines(db, "m,d=a v=2 1700000000000000000")
    assert influx1.select("SELECT v FROM m", db) == [{"time": 1700000000000000000, "v": 2}]


def test_influx1_unknown_database_write_is_refused(influx1: InfluxDB1) -> None:
    with pytest.raises(ServerError, match="database not found"):
        influx1.write_lines(unique("missing"), "m v=1 1")


def test_influx1_auth_mode(influx1_factory: Callable[..., InfluxDB1]) -> None:
    server = influx1_factory(username="admin", password="s3cret")
    server.create_database("secure")
    server.write_lines("secure", "m v=5 1700000000000000000")
    assert server.select("SELECT v FROM m", "secure") == [{"time": 1700000000000000000, "v": 5}]
    with pytest.raises(ServerError, match="HTTP 401"):
        server.query("SHOW DATABASES", auth=False)
    bad = base64.b64encode(b"admin:wrong").decode()
    status, body = http_request(
        "GET", f"{server.url}/query", params={"q": "SHOW DATABASES"},
        headers={"Authorization": f"Basic {bad}"},
    )
    assert (status, b"authorization failed" in body) == (401, True)
    server.restart()  # the admin user is stored in the meta dir and survives
    assert server.select("SELECT v FROM m", "secure")[0]["v"] == 5


# --- Mosquitto ---------------------------------------------------------------------------


class MqttProbe:
    """A paho-mqtt 2 MQTTv5 client on its network thread, recording what happens."""

    def __init__(self, client_id: str | None = None, *, v311_persistent: bool = False) -> None:
        """MQTT 5 by default; ``v311_persistent`` = MQTT 3.1.1 with clean_session=False."""
        self.v5 = not v311_persistent
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or unique("probe"),
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            clean_session=None if self.v5 else False,  # None: paho's default, and v5's only
        )
        self.session_present: bool | None = None
        self.connack: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: dict[int, Any] = {}
        self.acked = threading.Condition()
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put((rc, flags))
        # A connection dropped before CONNACK (e.g. TLS alert) ends the wait as a failure.
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.connack.put((rc, None))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.subscribed.set()
        self.client.on_publish = self._on_publish

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self.acked:
            self.acks[mid] = rc
            self.acked.notify_all()

    def connect(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        host: str = "127.0.0.1",
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        clean_start: bool = True,
        session_expiry: int | None = None,
    ) -> Any:
        """Connect and return the CONNACK reason code (raises on TLS failures)."""
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(
                ca_certs=str(ca),
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
            )
        props = None
        if session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        if self.v5:
            self.client.connect(host, port, clean_start=clean_start, properties=props)
        else:
            self.client.connect(host, port)
        self.client.loop_start()
        rc, flags = self.connack.get(timeout=WAIT)
        self.session_present = flags.session_present if flags is not None else None
        return rc

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self.subscribed.wait(WAIT)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Any:
        """Publish and wait for the broker's PUBACK; its reason code."""
        info = self.client.publish(topic, payload, qos)
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, WAIT)
            return self.acks[info.mid]

    def next_message(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes() -> Iterator[Callable[..., MqttProbe]]:
    made: list[MqttProbe] = []

    def make(client_id: str | None = None, **kwargs: Any) -> MqttProbe:
        made.append(MqttProbe(client_id, **kwargs))
        return made[-1]

    yield make
    for probe in made:
        probe.close()


def test_mosquitto_pubsub_with_password(
    mosquitto: Mosquitto, probes: Callable[..., MqttProbe]
) -> None:
    topic = f"compound/{unique('t')}/meter"
    sub, pub = probes(), probes()
    assert sub.connect(mosquitto.port, "gw", mosquitto.users["gw"]) == 0
    sub.subscribe(f"{topic}/#")
    assert pub.connect(mosquitto.port, "gw", mosquitto.users["gw"]) == 0
    payload = b"\x00\xffbinary and text"
    assert pub.publish(f"{topic}/1", payload).is_failure is False
    msg = sub.next_message()
    assert (msg.topic, msg.payload) == (f"{topic}/1", payload)


def test_mosquitto_wrong_password_is_refused(
    mosquitto: Mosquitto, probes: Callable[..., MqttProbe]
) -> None:
    rc = probes().connect(mosquitto.port, "gw", "not-the-password")
    assert rc.is_failure
    assert rc.getName() in {"Bad user name or password", "Not authorized"}
    assert probes().connect(mosquitto.port).is_failure  # anonymous is off too


def test_mosquitto_acl_forbidden_publish_is_not_delivered(
    mosquitto: Mosquitto, probes: Callable[..., MqttProbe]
) -> None:
    tag = unique("acl")
    ops, gw = probes(), probes()
    assert ops.connect(mosquitto.port, "ops", mosquitto.users["ops"]) == 0
    ops.subscribe("ops/#")
    ops.subscribe(f"compound/{tag}/#")
    assert gw.connect(mosquitto.port, "gw", mosquitto.users["gw"]) == 0

    denied = gw.publish(f"ops/{tag}/forbidden", b"must not arrive")
    gw.publish(f"compound/{tag}/marker", b"after")  # same publisher: delivered in order

    msg = ops.next_message()
    assert (msg.topic, msg.payload) == (f"compound/{tag}/marker", b"after")
    assert ops.messages.empty()
    # MQTT 5 tells the publisher: mosquitto 2.0 answers the QoS 1 publish "Not authorized".
    assert denied.is_failure and denied.getName() == "Not authorized"


def test_mosquitto_tls_verified_with_test_ca(
    mosquitto: Mosquitto, probes: Callable[..., MqttProbe], tmp_path: Path
) -> None:
    topic = f"compound/{unique('tls')}"
    tls = probes()
    assert tls.connect(
        mosquitto.tls_port, "gw", mosquitto.users["gw"], ca=mosquitto.ca_file
    ) == 0
    tls.subscribe(topic)
    tls.publish(topic, b"over tls")
    assert tls.next_message().payload == b"over tls"
    assert probes().connect(
        mosquitto.tls_port, "gw", mosquitto.users["gw"], host="localhost", ca=mosquitto.ca_file
    ) == 0
    # A client trusting another CA must refuse the server certificate.
    other = TestCA(tmp_path, name="someone else")
    with pytest.raises(ssl.SSLCertVerificationError):
        probes().connect(mosquitto.tls_port, "gw", mosquitto.users["gw"], ca=other.cert_file)


def test_mosquitto_mutual_tls(
    mosquitto_factory: Callable[..., Mosquitto], probes: Callable[..., MqttProbe]
) -> None:
    broker = mosquitto_factory(require_certificate=True)
    good = probes().connect(
        broker.tls_port, "gw", broker.users["gw"],
        ca=broker.ca_file, cert=broker.client_cert, key=broker.client_key,
    )
    assert good == 0
    refused = probes()
    try:
        rc = refused.connect(broker.tls_port, "gw", broker.users["gw"], ca=broker.ca_file)
    except (ssl.SSLError, OSError):
        rc = None  # TLS 1.2 fails in the handshake; TLS 1.3 only after it, at CONNECT
    assert rc is None or rc.is_failure
    assert refused.session_present is None  # never got a CONNACK
    assert "peer did not return a certificate" in broker.log_tail()


def test_mosquitto_restart_same_port_keeps_persistent_session(
    mosquitto_factory: Callable[..., Mosquitto], probes: Callable[..., MqttProbe]
) -> None:
    broker = mosquitto_factory(persistence=True)
    port, pid = broker.port, broker.pid
    sub_id, topic = unique("sub"), f"compound/{unique('restart')}"

    sub = probes(sub_id, v311_persistent=True)
    assert sub.connect(port, "ops", broker.users["ops"]) == 0
    sub.subscribe(topic, qos=1)
    sub.close()

    pub = probes()
    assert pub.connect(port, "gw", broker.users["gw"]) == 0
    assert pub.publish(topic, b"queued while offline").is_failure is False
    pub.close()

    broker.restart()
    assert broker.port == port and broker.pid != pid

    again = probes(sub_id, v311_persistent=True)
    assert again.connect(port, "ops", broker.users["ops"]) == 0
    assert again.session_present is True
    msg = again.next_message()
    assert (msg.topic, msg.payload) == (topic, b"queued while offline")


@pytest.mark.parametrize("clean_start", [False, True])
def test_mosquitto_mqtt5_session_survives_restart_only_without_clean_start(
    mosquitto_factory: Callable[..., Mosquitto],
    probes: Callable[..., MqttProbe],
    clean_start: bool,
) -> None:
    """Broker fact the gateway must live with: mosquitto 2.0.11 persists an MQTT 5 session
    (session expiry > 0) over its own restart only if the client's last CONNECT had
    clean_start=False; with clean_start=True the session survives reconnects but not a
    broker restart, and messages queued for it are lost."""
    broker = mosquitto_factory(persistence=True)
    sub_id, topic = unique("sub5"), f"compound/{unique('v5')}"
    first = probes(sub_id)
    assert first.connect(broker.port, "ops", broker.users["ops"], clean_start=clean_start,
                         session_expiry=3600) == 0
    first.subscribe(topic)
    first.close()
    pub = probes()
    assert pub.connect(broker.port, "gw", broker.users["gw"]) == 0
    pub.publish(topic, b"queued")
    pub.close()

    broker.restart()

    again = probes(sub_id)
    assert again.connect(broker.port, "ops", broker.users["ops"], clean_start=False,
                         session_expiry=3600) == 0
    assert again.session_present is (not clean_start)
    if not clean_start:
        assert again.next_message().payload == b"queued"
