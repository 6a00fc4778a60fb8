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


def bulk(devices: int, tag: str) -> str:
    rows = "".join(f"  - {{id: bulk{i:03d}, driver: synthetic, interval: 1s, "
                   f"tags: {{batch: {tag}}}}}\n" for i in range(devices))
    return BASE + "devices:\n" + rows


async def test_reloads_requested_together_run_one_after_the_other(tmp_path: Path) -> None:
    """An outside probe sent three ``cmd/reload`` 20 ms apart with 150 changed devices:
    1-2 of 3 answered ``KeyError: 'bulk005'`` and the config was half applied (a second
    reload deleted, at the first's awaits, entries the first had just re-added). Reloads
    now queue: every one succeeds and each device runs once, on the new config."""
    config = tmp_path / "gw.yaml"
    config.write_text(bulk(150, "a"))
    gateway = Gateway(load_config(config))
    task = asyncio.create_task(gateway.run())
    try:
        for _ in range(200):
            if gateway.supervisor is not None and len(gateway.devices) == 150:
                break
            await asyncio.sleep(0.025)
        stop_device = gateway._stop_device

        async def slow_stop(device_id: str) -> None:  # a driver slow to close, as a real
            await stop_device(device_id)              # one on a dead link can be
            await asyncio.sleep(0.005)

        gateway._stop_device = slow_stop  # type: ignore[method-assign]
        config.write_text(bulk(150, "b"))
        first = asyncio.create_task(gateway.reload())
        for _ in range(400):  # until the first reload is stopping devices
            if len(gateway._device_configs) < 150:
                break
            await asyncio.sleep(0.005)
        results = await asyncio.gather(first, *(gateway.reload() for _ in range(2)),
                                       return_exceptions=True)
        assert results == [True, True, True]
        assert gateway.supervisor is not None
        running = [n for n in gateway.supervisor.names() if n.startswith("device:")]
        assert sorted(running) == [f"device:bulk{i:03d}" for i in range(150)]
        assert {d.tags["batch"] for d in gateway.config.devices} == {"b"}
        assert {gateway._device_configs[f"bulk{i:03d}"].tags["batch"]
                for i in range(150)} == {"b"}
        assert not gateway.supervisor.failing
    finally:
        gateway.request_stop()
        async with asyncio.timeout(30):
            await task
