"""Reloads and the config's sections: a device added by a reload sees the config it was
added with; a changed section that only a start sets up (mqtt:, http:, buses: ...) makes
the gateway stop to start again in place instead of being silently ignored (an outside
probe: a new ``http.listen`` port refused connections, commands still ran on the old
``mqtt.base_topic``, while the log said "config reloaded")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.restart import Restart
from gateway.runtime import Gateway
from tests.support.servers import Mosquitto

BASE = ("gateway: {id: gw-r, site: s, data_dir: data}\nbuffer: {flush_interval: 50ms}\n"
        "sinks: [{type: file}]\n")


def mqtt_section(broker: Mosquitto, base: str = "compound/reload/gw") -> str:
    return (f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw, "
            f"password: {broker.users['gw']}, base_topic: {base}}}\n")


async def started(gateway: Gateway) -> asyncio.Task[None]:
    task = asyncio.create_task(gateway.run())
    for _ in range(200):
        if gateway.supervisor is not None:
            break
        await asyncio.sleep(0.025)
    return task


async def test_a_device_added_by_reload_sees_the_running_sections(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(BASE + mqtt_section(mosquitto)
                      + "devices: [{id: steady, driver: synthetic, interval: 50ms}]\n")
    gateway = Gateway(load_config(config))
    task = await started(gateway)
    try:
        config.write_text(
            BASE + mqtt_section(mosquitto)
            + "devices:\n  - {id: steady, driver: synthetic, interval: 50ms}\n"
            "  - {id: cam, driver: mqtt, topic: compound/reload/cam, measurement: m, "
            "fields: {v: $.v}}\n")
        assert await gateway.reload()
        assert gateway.restart is None  # devices apply live
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


@pytest.mark.parametrize(("before", "after", "changed"), [
    ("", "<mqtt>", ("mqtt",)),
    ("<mqtt>", "<mqtt_moved>", ("mqtt",)),
    ("http: {listen: '127.0.0.1:0'}\n", "http: {listen: '127.0.0.1:0', max_body: 2MiB}\n",
     ("http",)),
    ("", "alarms: {max_alarms: 20}\n", ("alarms",)),
    ("buses: {b: {type: tcp, host: 127.0.0.1, port: 1502}}\n",
     "buses: {b: {type: tcp, host: 127.0.0.1, port: 1503}}\n", ("buses",)),
    ("", "<buffer_smaller>", ("buffer",)),
    ("<mqtt>", "<mqtt_moved>alarms: {max_alarms: 20}\n", ("mqtt", "alarms")),
], ids=["mqtt-added", "mqtt-base-topic", "http", "alarms", "buses", "buffer", "two"])
async def test_a_section_only_a_start_sets_up_restarts_the_gateway_in_place(
        tmp_path: Path, mosquitto: Mosquitto, before: str, after: str,
        changed: tuple[str, ...]) -> None:
    def filled(text: str) -> str:
        return (text.replace("<mqtt>", mqtt_section(mosquitto))
                .replace("<buffer_smaller>", "")
                .replace("<mqtt_moved>", mqtt_section(mosquitto, "compound/reload/moved")))

    devices = "devices: [{id: steady, driver: synthetic, interval: 50ms}]\n"
    config = tmp_path / "gw.yaml"
    config.write_text(BASE + filled(before) + devices)
    gateway = Gateway(load_config(config))
    task = await started(gateway)
    try:
        text = BASE + filled(after) + devices
        if "<buffer_smaller>" in after:
            text = text.replace("buffer: {flush_interval: 50ms}",
                                "buffer: {flush_interval: 50ms, max_bytes: 64MiB}")
        config.write_text(text)
        assert await gateway.reload()
        assert gateway.restart == Restart(changed, config_digest=load_config(config).digest)
        async with asyncio.timeout(30):  # it stops by itself, for `iotgw run` to exec
            await task
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
