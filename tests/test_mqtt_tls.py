"""Mutual TLS: the broker requires a client certificate from the test CA.

An in-process gateway with ``tls: {ca_file, cert_file, key_file}`` connects both its
connections (ops bus: birth on ``status``; devices: a reading arrives and is published on
``values``); the same gateway without the client certificate is refused by the broker
and publishes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from gateway.config.loader import load_config
from gateway.runtime import Gateway
from tests.support.mqtt import watch
from tests.support.servers import Mosquitto
from tests.support.wait import eventually


def write_config(path: Path, broker: Mosquitto, base: str, *, client_cert: bool) -> None:
    cert = (f", cert_file: '{broker.client_cert}', key_file: '{broker.client_key}'"
            if client_cert else "")
    path.write_text(
        f"gateway: {{id: {base.rsplit('/', 1)[-1]}, site: s, data_dir: data}}\n"
        "sinks: [{type: file, name: f}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.tls_port}, username: gw, password: gw-secret,"
        f" base_topic: {base}, client_id: {base.replace('/', '-')},"
        f" tls: {{ca_file: '{broker.ca_file}'{cert}}}}}\n"
        "devices:\n"
        f"  - {{id: tls-sensor, driver: mqtt, topic: '{base}-in/+room/temp', format: number,"
        " measurement: tls_room, qos: 1}\n")


async def test_client_certificate_required(tmp_path: Path, mosquitto_factory: Callable[...,
                                           Mosquitto]) -> None:
    broker = mosquitto_factory(require_certificate=True)
    watcher = watch(broker)
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    write_config(good / "gw.yaml", broker, "compound/tls/gwgood", client_cert=True)
    write_config(bad / "gw.yaml", broker, "compound/tls/gwbad", client_cert=False)
    gateways = [Gateway(load_config(good / "gw.yaml")), Gateway(load_config(bad / "gw.yaml"))]
    runners = [asyncio.create_task(g.run()) for g in gateways]
    try:
        births = await eventually(lambda: watcher.on("compound/tls/gwgood/status"), within=20)
        birth = json.loads(births[-1])
        assert birth["state"] == "online" and birth["gateway"] == "gwgood"

        # the device connection is up too: a value published in the clear reaches it
        def values() -> list[bytes]:
            seen = watcher.on("compound/tls/gwgood/devices/tls-sensor/values")
            if not seen:  # published until the device connection is up and takes it
                watcher.publish("compound/tls/gwgood-in/hall/temp", b"19.5", qos=1)
            return seen

        value = json.loads((await eventually(values, within=20, every=0.5))[-1])
        assert value["fields"] == {"value": 19.5} and value["tags"]["room"] == "hall"

        await asyncio.sleep(2.0)  # the other one had as long and retried meanwhile
        assert not [t for t, _, _ in watcher.messages if t.startswith("compound/tls/gwbad/")]
        log = broker.log_tail(400)
        assert "peer did not return a certificate" in log
        assert "as compound-tls-gwbad" not in log, "connected without a client certificate"
        assert "as compound-tls-gwgood-dev" in log and "as compound-tls-gwgood-ops" in log
    finally:
        watcher.close()
        for gateway in gateways:
            gateway.request_stop()
        await asyncio.wait_for(asyncio.gather(*runners), 20)
