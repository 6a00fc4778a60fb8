"""The simulated compound: its devices, the gateway config for them, and the run.

The config is written as ``<data_dir>/demo-gateway.yaml`` and loaded with the normal
loader (so it is validated like any site's); secrets (InfluxDB token, MQTT password) are
referenced as ``${...}`` and handed to the loader in memory, never written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demo.meters import LeakingWater, Load, MeterBus, ModbusMeters, WaterMeter
from drivers.mqtt.sim import PLATES, PlateCamera
from drivers.serial_line.sim import CardReader, DoorController

log = logging.getLogger("iotgw.demo")

SITE = "demo-compound"
CARDS = ["0004123456", "0004123457", "0007765432", "0001000099"]
PLATE_TOPIC = "compound/demo-compound/gw-demo/cameras/device/+sn/message/up/ivs_result"
"""Below the gateway's own subtree, which the deploy/mosquitto ACL lets it read and write."""

# Modbus TCP: (server, unit, device id, profile, building, tags)
MODBUS_DEVICES = [
    ("b1", 1, "b1-main-meter", "eastron-sdm630", {"building": "1"}),
    ("b1", 2, "b1-flat-101", "chint-ddsu666", {"building": "1", "unit": "101"}),
    ("b1", 3, "b1-flat-102", "chint-ddsu666", {"building": "1", "unit": "102"}),
    ("b2", 1, "b2-main-meter", "eastron-sdm630", {"building": "2"}),
    ("b2", 2, "b2-water-101", "water-meter-ultrasonic", {"building": "2", "unit": "101"}),
]
LEAKING = "b2-water-101"
DOOR = "b1-door-east"
BLOCKED_PLATE = PLATES[2]
"""On the demo's blocklist: the camera shows it now and then (with --mqtt-host)."""
DEMO_RULES: list[dict[str, Any]] = [
    # The pack's leak rule waits 3 hours; these two show the same alarms within a minute.
    {"id": "demo-water-leak", "devices": [LEAKING],
     "window": {"field": "flow_rate", "over": "15s", "buckets": 15},
     "when": "full and min > 0", "clear": "min <= 0", "severity": 2,
     "message": "water has not stopped for 15 s (demo timing; pack:compound waits 3 h)"},
    {"id": "demo-door-held-open", "devices": [DOOR], "when": 'event == "door_open"',
     "for": "15s", "clear": 'event == "door_closed"', "severity": 2,
     "message": "door held open for more than 15 s (demo timing; pack:compound: 60 s)"},
]
DLT645_METERS = [("b3-meter-0301", "000012340301", {"building": "3", "unit": "0301"}),
                 ("b3-meter-0302", "000012340302", {"building": "3", "unit": "0302"})]
CJT188_METERS = [("b3-water-0301", "00201510270301", {"building": "3", "unit": "0301"}),
                 ("b3-water-0302", "00201510270302", {"building": "3", "unit": "0302"})]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Compound:
    """Every simulator of the demo, created before the config that points at them."""

    modbus_ports: dict[str, int] = field(default_factory=dict)
    bus: MeterBus | None = None
    reader: CardReader | None = None
    door: DoorController | None = None
    camera: PlateCamera | None = None
    modbus: list[ModbusMeters] = field(default_factory=list)


def build_config(args: argparse.Namespace, compound: Compound, data_dir: Path,
                 key_file: Path) -> dict[str, Any]:
    assert compound.bus is not None and compound.reader is not None
    buses: dict[str, Any] = {
        f"modbus-{name}": {"type": "tcp", "host": "127.0.0.1", "port": port, "timeout": "1s"}
        for name, port in compound.modbus_ports.items()}
    buses["rs485-b3"] = {"type": "serial", "port": compound.bus.path, "baudrate": 2400,
                         "parity": "E", "timeout": "500ms"}
    devices: list[dict[str, Any]] = []
    for server, unit, device_id, profile, tags in MODBUS_DEVICES:
        devices.append({"id": device_id, "driver": "modbus", "bus": f"modbus-{server}",
                        "unit": unit, "profile": profile, "interval": "2s", "tags": tags})
    for device_id, address, tags in DLT645_METERS:
        devices.append({"id": device_id, "driver": "dlt645", "bus": "rs485-b3",
                        "address": address, "interval": "5s", "tags": tags,
                        "points": ["energy_total", "voltage_a", "current_a", "power_total",
                                   "frequency"]})
    for device_id, address, tags in CJT188_METERS:
        devices.append({"id": device_id, "driver": "cjt188", "bus": "rs485-b3",
                        "address": address, "meter_type": "cold_water", "interval": "5s",
                        "tags": tags})
    devices.append({
        "id": "gate-north-reader", "driver": "serial_line", "port": compound.reader.path,
        "baudrate": 9600, "framing": {"mode": "delimiter", "delimiter": "0D0A"},
        "pattern": r"^CARD:(?P<card>\d+);DIR:(?P<direction>IN|OUT)$",
        "tag_groups": ["direction"], "types": {"card": "str"}, "measurement": "access_event",
        "pseudonymize": ["card"], "tags": {"gate": "north"}})
    if compound.door is not None:
        devices.append({
            "id": DOOR, "driver": "serial_line", "port": compound.door.path,
            "framing": {"mode": "delimiter", "delimiter": "0D0A"},
            "pattern": r"^EVT:(?P<event>[a-z_]+)$", "measurement": "access_event",
            "tags": {"building": "1", "door": "east"}})
    config: dict[str, Any] = {
        "gateway": {"id": "gw-demo", "site": SITE, "data_dir": str(data_dir),
                    "shutdown_timeout": "5s"},
        "buffer": {"max_bytes": "64MiB", "when_full": "drop_oldest", "flush_interval": "500ms"},
        "privacy": {"key_file": str(key_file)},
        "health": {"listen": args.health_listen},
        "buses": buses,
        "devices": devices,
        "rules_files": ["pack:compound"],
        "rules": DEMO_RULES,
    }
    if args.influx_url:
        sink: dict[str, Any] = {"type": "influxdb", "name": "influx", "url": args.influx_url,
                                "bucket": args.influx_bucket, "org": args.influx_org}
        if args.influx_token:
            sink["token"] = "${IOTGW_DEMO_INFLUX_TOKEN}"
        config["sinks"] = [sink]
    else:
        config["sinks"] = [{"type": "file", "name": "file"}]
    if args.mqtt_host:
        mqtt: dict[str, Any] = {"host": args.mqtt_host, "port": args.mqtt_port,
                                "base_topic": f"compound/{SITE}/gw-demo",
                                "client_id": f"iotgw-demo-{os.getpid()}"}
        if args.mqtt_username:
            mqtt["username"] = args.mqtt_username
        if args.mqtt_password:
            mqtt["password"] = "${IOTGW_DEMO_MQTT_PASSWORD}"
        config["mqtt"] = mqtt
        devices.append({"id": "gate-north-camera", "driver": "mqtt", "profile": "vzicloud-plate",
                        "topic": PLATE_TOPIC, "tags": {"gate": "north"}})
    return config


def ensure_key(path: Path) -> None:
    """A random pseudonymisation key for the demo (kept: same card, same hash across runs)."""
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")


def write_config(args: argparse.Namespace, compound: Compound, data_dir: Path) -> Any:
    from gateway.config.loader import load_config

    key_file = data_dir / "pseudonym.key"
    ensure_key(key_file)
    # the pack's plate rule reads blocklists/plates.txt next to the config
    (data_dir / "blocklists").mkdir(exist_ok=True)
    (data_dir / "blocklists" / "plates.txt").write_text(
        f"# demo blocklist\n{BLOCKED_PLATE}\n", encoding="utf-8")
    config = build_config(args, compound, data_dir, key_file)
    path = data_dir / "demo-gateway.yaml"
    # JSON is YAML: no dumper needed, and the loader reports problems by line.
    path.write_text("# written by `iotgw demo`; the device paths change every run\n"
                    + json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    environ = dict(os.environ)
    if args.influx_token:
        environ["IOTGW_DEMO_INFLUX_TOKEN"] = args.influx_token
    if args.mqtt_password:
        environ["IOTGW_DEMO_MQTT_PASSWORD"] = args.mqtt_password
    return load_config(path, environ)


async def run_compound(args: argparse.Namespace) -> int:
    from gateway.errors import ConfigError

    data_dir: Path = args.data_dir  # resolved and created by cmd_demo
    compound = Compound()
    compound.modbus_ports = {"b1": free_port(), "b2": free_port()}
    compound.bus = MeterBus({a: Load(phases=1, nominal_current=8) for _, a, _ in DLT645_METERS},
                            [WaterMeter(a) for _, a, _ in CJT188_METERS])
    compound.reader = CardReader(CARDS, every=args.swipe_every)
    compound.door = DoorController()
    try:
        try:
            config = write_config(args, compound, data_dir)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem)
            return 2
        return await _run(args, compound, config)
    finally:
        await compound.bus.stop()
        compound.reader.close()
        compound.door.close()


async def _run(args: argparse.Namespace, compound: Compound, config: Any) -> int:
    from demo.view import View
    from drivers.modbus.profiles import resolve_points
    from gateway.runtime import Gateway

    assert compound.bus is not None and compound.reader is not None
    for server, port in compound.modbus_ports.items():
        mine = [d for d in config.devices
                if d.driver == "modbus" and d.bus == f"modbus-{server}"]
        units = {d.unit: resolve_points(d)[0] for d in mine}
        loads: dict[int, Load | LeakingWater] = {
            d.unit: LeakingWater() if d.id == LEAKING else Load() for d in mine}
        compound.modbus.append(await ModbusMeters(port, units, loads).start())
    await compound.bus.start()
    sim_tasks = [asyncio.create_task(m.run(), name="demo:modbus") for m in compound.modbus]
    sim_tasks.append(asyncio.create_task(compound.reader.run(), name="demo:reader"))
    if compound.door is not None:
        sim_tasks.append(asyncio.create_task(compound.door.run(), name="demo:door"))
    if args.mqtt_host:
        compound.camera = PlateCamera(args.mqtt_host, args.mqtt_port,
                                      PLATE_TOPIC.replace("+sn", "e5f1a0c3"),
                                      username=args.mqtt_username, password=args.mqtt_password)
        sim_tasks.append(asyncio.create_task(compound.camera.run(), name="demo:camera"))

    gateway = Gateway(config)
    view = View(gateway, compound, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.request_stop)
    if args.duration:
        loop.call_later(args.duration, gateway.request_stop)
    sim_tasks.append(asyncio.create_task(view.run(draw=not args.no_view), name="demo:view"))
    log.info("demo compound: data in %s, config %s", config.data_dir, config.path)
    try:
        await gateway.run()
    finally:
        for task in sim_tasks:
            task.cancel()
        for task in sim_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for meters in compound.modbus:
            await meters.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    print(view.summary())
    return 0
