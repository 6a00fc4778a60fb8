"""The MQTT devices' persistent session across a clean stop: what the broker queued while
the gateway was down is stored after the next start (a real ``iotgw run``, mosquitto)."""

from __future__ import annotations

from pathlib import Path

from tests.gwproc import GatewayProcess
from tests.support.mqtt import connect, mqtt_config
from tests.support.servers import Mosquitto
from tests.support.wait import eventually_sync

TOPIC = "compound/session-t1/meter"


def stored(data: Path) -> set[int]:
    current = data / "lines" / "current.lp"
    if not current.exists():
        return set()
    return {int(float(line.split("value=")[1].split()[0].rstrip("i")))
            for line in current.read_text().splitlines() if line.startswith("session_t1,")}


def test_messages_published_while_the_gateway_is_stopped_are_stored_after_the_start(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A clean stop used to UNSUBSCRIBE every device filter from the persistent session
    on the way out, so the broker dropped what was published until the next start."""
    config = tmp_path / "gw.yaml"
    mqtt_config(config, mosquitto, base="compound/session-t1/gw", tls=False,
                sinks="  - {type: file}\n",
                devices=f"  - {{id: s1, driver: mqtt, topic: {TOPIC}, format: number, "
                        "measurement: session_t1}\n")
    data = tmp_path / "data"
    publisher = connect(mosquitto)
    try:
        gw = GatewayProcess(config).start()
        try:
            gw.wait_for_log(lambda r: "connected" in r["msg"] and "-dev" in r["msg"])
            publisher.publish(TOPIC, b"0", qos=1).wait_for_publish(10)
            eventually_sync(lambda: stored(data) == {0}, within=30,
                            what="the first message stored")
        finally:
            assert gw.stop() == 0
        for n in range(1, 51):  # the gateway is down: the broker queues them
            publisher.publish(TOPIC, str(n).encode(), qos=1).wait_for_publish(10)
        gw = GatewayProcess(config).start()
        try:
            eventually_sync(lambda: stored(data) == set(range(51)), within=30,
                            what=lambda: f"every message; missing "
                                         f"{sorted(set(range(51)) - stored(data))}")
        finally:
            assert gw.stop() == 0
    finally:
        publisher.close()
