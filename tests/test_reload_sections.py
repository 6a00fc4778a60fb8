"""A reload that adds a gateway-wide section and the device needing it in one go: the
device starts with the new config visible through the plugin handle (it used to read the
old one, and an mqtt device added with its mqtt: section failed "needs the mqtt:
section" until the next restart)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config.loader import load_config
from gateway.runtime import Gateway
from tests.support.servers import Mosquitto

BASE = ("gateway: {id: gw-r, site: s, data_dir: data}\nbuffer: {flush_interval: 50ms}\n"
        "sinks: [{type: file}]\n")


async def test_a_device_added_with_its_section_by_reload_sees_the_section(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(BASE + "devices: [{id: steady, driver: synthetic, interval: 50ms}]\n")
    gateway = Gateway(load_config(config))
    task = asyncio.create_task(gateway.run())
    try:
        for _ in range(200):
            if gateway.supervisor is not None:
                break
            await asyncio.sleep(0.025)
        config.write_text(
            BASE + f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, username: gw, "
            f"password: {mosquitto.users['gw']}, base_topic: compound/reload/gw}}\n"
            "devices:\n  - {id: steady, driver: synthetic, interval: 50ms}\n"
            "  - {id: cam, driver: mqtt, topic: compound/reload/cam, measurement: m, "
            "fields: {v: $.v}}\n")
        assert await gateway.reload()
        for _ in range(400):  # hang guard: 20 s
            if str(gateway.devices["cam"].status.state) == "online":
                break
            await asyncio.sleep(0.05)
        status = gateway.devices["cam"].status
        assert str(status.state) == "online", status.last_error
        assert gateway.supervisor is not None and not gateway.supervisor.failing
    finally:
        gateway.request_stop()
        async with asyncio.timeout(30):
            await task
