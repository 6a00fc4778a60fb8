"""Home Assistant MQTT discovery through a real broker (in-process gateway)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.runtime import Gateway
from tests.support.mqtt import TestClient, watch
from tests.support.servers import DEFAULT_MQTT_ACL, Mosquitto
from tests.support.wait import eventually


def write_config(path: Path, broker: Mosquitto, base: str, homeassistant: str = "") -> None:
    path.write_text(
        f"gateway: {{id: {base.rsplit('/', 1)[-1]}, site: s, data_dir: data}}\n"
        "sinks: [{type: file, name: f}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw, password: gw-secret,"
        f" base_topic: {base}, client_id: {base.replace('/', '-')}{homeassistant}}}\n"
        "devices:\n"
        f"  - {{id: room-7, driver: mqtt, topic: '{base}-in/room7', format: kv,"
        " measurement: climate, qos: 1,"
        " fields: {temp: $.temp, hum: $.hum, door: $.door}}\n")


async def run_and_feed(config: Path, watcher: TestClient, base: str, seconds: float) -> None:
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    try:
        await eventually(lambda: watcher.on(f"{base}/status"), within=20)

        def values() -> list[bytes]:
            seen = watcher.on(f"{base}/devices/room-7/values")
            if not seen:  # published until the device connection is up and takes it
                watcher.publish(f"{base}-in/room7", b"temp=21.5, hum=40, door=open", qos=1)
            return seen

        await eventually(values, within=20, every=0.5)
        await asyncio.sleep(seconds)
    finally:
        gateway.request_stop()
        await asyncio.wait_for(runner, 15)


async def test_discovery_configs_retained(tmp_path: Path, mosquitto_factory: Callable[...,
                                          Mosquitto]) -> None:
    broker = mosquitto_factory()
    base = "compound/ha/gwha"
    write_config(tmp_path / "gw.yaml", broker, base,
                 ", homeassistant: {enabled: true, prefix: compound/hatest}")
    watcher = watch(broker)
    try:
        await run_and_feed(tmp_path / "gw.yaml", watcher, base, 0.5)
    finally:
        watcher.close()

    # a dashboard connecting later gets the configs: they are retained
    late = watch(broker)
    try:
        await eventually(lambda: late.under("compound/hatest/"), until=lambda t: len(t) >= 2,
                         within=10)
        await asyncio.sleep(0.3)
        configs = {t: (json.loads(p), r) for t, p, r in late.messages
                   if t.startswith("compound/hatest/")}
    finally:
        late.close()
    assert set(configs) == {"compound/hatest/sensor/gwha/room-7_climate_temp/config",
                            "compound/hatest/sensor/gwha/room-7_climate_hum/config"}, configs
    for topic, (body, retained) in configs.items():
        assert retained, topic
        field = topic.split("_")[-1].split("/")[0]
        assert body["state_topic"] == f"{base}/devices/room-7/values"
        assert f"value_json.fields.{field}" in body["value_template"]
        assert '"climate"' in body["value_template"]
        assert body["availability_topic"] == f"{base}/status"
        assert body["device"]["identifiers"] == ["iotgw_gwha_room-7"]
        assert body["device"]["name"] == "room-7" and body["device"]["model"] == "mqtt"
        assert body["unique_id"] == f"iotgw_gwha_room-7_climate_{field}"
    # the template's path matches what the values topic carries
    values = json.loads(watcher.on(f"{base}/devices/room-7/values")[-1])
    assert values["measurement"] == "climate"
    assert values["fields"]["temp"] == 21.5 and values["fields"]["hum"] == 40


# The default ACL keeps gw below compound/, where discovery configs under the default
# prefix could neither be published nor seen: here gw may use homeassistant/# as well.
HA_ACL = DEFAULT_MQTT_ACL.replace("user gw\ntopic readwrite compound/#\n",
                                  "user gw\ntopic readwrite compound/#\n"
                                  "topic readwrite homeassistant/#\n")
assert HA_ACL != DEFAULT_MQTT_ACL


async def test_discovery_off_by_default(tmp_path: Path, mosquitto_factory: Callable[...,
                                        Mosquitto]) -> None:
    broker = mosquitto_factory(acl=HA_ACL)
    base = "compound/ha/gwoff"
    write_config(tmp_path / "gw.yaml", broker, base)
    watcher = watch(broker)
    watcher.subscribe("homeassistant/#", 1)
    try:
        await run_and_feed(tmp_path / "gw.yaml", watcher, base, 1.0)
        assert not [t for t, _, _ in watcher.messages if "homeassistant" in t
                    or "/config" in t]

        # Control: the same broker and watcher do see configs under the default prefix
        # once discovery is enabled, so the absence above means "not published".
        (tmp_path / "on").mkdir()
        write_config(tmp_path / "on" / "gw.yaml", broker, "compound/ha/gwon",
                     ", homeassistant: {enabled: true}")
        await run_and_feed(tmp_path / "on" / "gw.yaml", watcher, "compound/ha/gwon", 0.0)
        await eventually(lambda: watcher.under("homeassistant/sensor/gwon/"),
                         until=lambda t: len(t) >= 2, within=10)
    finally:
        watcher.close()


async def test_a_publish_the_broker_refuses_is_said_once_and_counted(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        caplog: pytest.LogCaptureFixture) -> None:
    """Discovery on, but the ACL (the default test one) keeps the gateway out of
    homeassistant/: the broker refuses every config (MQTT 5 PUBACK 135). The gateway says
    so once, naming the topic root, counts each refusal in ``stats`` and keeps running."""
    broker = mosquitto_factory()
    base = "compound/ha/gwdenied"
    write_config(tmp_path / "gw.yaml", broker, base,
                 ", homeassistant: {enabled: true}, stats_interval: 1s")
    watcher = watch(broker)
    try:
        with caplog.at_level("WARNING"):
            await run_and_feed(tmp_path / "gw.yaml", watcher, base, 2.5)
        refused = [r.getMessage() for r in caplog.records if "refused publishes" in
                   r.getMessage()]
        assert len(refused) == 1, refused
        assert "under homeassistant/" in refused[0] and "Not authorized" in refused[0]
        stats = [json.loads(p) for t, p, _ in watcher.messages if t == f"{base}/stats"]
        assert stats and stats[-1]["ops"]["publish_refused"] >= 2  # temp and hum configs
        assert watcher.on(f"{base}/devices/room-7/values")  # still running meanwhile
    finally:
        watcher.close()
