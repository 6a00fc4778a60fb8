"""The shipped rule pack (``rules_files: ["pack:compound"]``) against the project's
simulators: each rule fires on what the real drivers read from a simulated device.

Readings come from the drivers themselves (Modbus against ``drivers/modbus/tests/sim.py``,
DL/T 645 against ``tests/serial_sims.py``, serial_line records and an OSDP reader
(libosdp's own peripheral) over ptys, a plate camera message from the demo's simulator
decoded by the MQTT driver's mapper). The pack's rules are loaded through the normal
config loader and run in the real engine on a simulated clock, so a 3-hour window or a
5-minute on-delay is tested in seconds: every live reading is handed to the engine at the
simulated time the scenario says.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from drivers.dlt645.points import POINTS_2007
from drivers.dlt645.sim import Dlt645Bus, Meter645
from drivers.modbus.config import ModbusConfig
from drivers.modbus.profiles import resolve_points
from drivers.modbus.sim import Device, TcpSim, Units
from drivers.modbus.tests.harness import Fleet, tcp_bus
from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.mapping import Mapper
from drivers.mqtt.sim import plate_message
from drivers.osdp.sim import ADDRESS, KEY, new_reader, raw_pty
from drivers.serialbus.sim import PtySerial, StreamDevice, bcd_le
from gateway.alarms.engine import Engine
from gateway.alarms.model import AlarmAction, AlarmCommand, AlarmState, Transition
from gateway.alarms.service import build_rules, device_infos
from gateway.config.loader import LoadedConfig, load_config
from gateway.driver import DeviceState
from gateway.reading import Reading
from tests.serial_harness import Harness
from tests.support.servers import free_port

START = datetime(2026, 3, 2, 0, 0).astimezone().timestamp()
"""Midnight, local time (the pack's `active:` spans use the system zone)."""
HOUR = 3600.0


class Silent(StreamDevice):
    """A serial device that only talks: the test writes its records into the pty."""

    def take_frame(self) -> bytes | None:
        self.buffer.clear()
        return None


def pack_config(tmp_path: Path, blocked: list[str]) -> LoadedConfig:
    (tmp_path / "blocklists").mkdir(parents=True)
    (tmp_path / "blocklists" / "plates.txt").write_text(
        "# plates the police asked about\n" + "\n".join(blocked) + "\n")
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-pack, site: s, data_dir: data}\n"
        "sinks: [{type: file}]\n"
        "rules_files: ['pack:compound']\n"
        "buses: {mb: {type: tcp, host: 127.0.0.1}}\n"
        "devices:\n"
        "  - {id: flat-101, driver: modbus, bus: mb, unit: 1, profile: chint-ddsu666}\n"
        "  - {id: water-101, driver: modbus, bus: mb, unit: 2, profile: water-meter-ultrasonic}\n"
        "  - {id: barrier-1, driver: modbus, bus: mb, unit: 3, profile: barrier-gate-controller}\n")
    return load_config(config, environ={})


class PackEngine:
    """The pack's rules in the real engine, on a simulated clock."""

    def __init__(self, config: LoadedConfig) -> None:
        self.engine = Engine(build_rules(config, None), devices=device_infos(config),
                             settings=config.model.alarms)
        self.now = START
        self.engine.start(START)
        self.log: list[Transition] = []

    def at(self, t: float) -> None:
        assert START + t >= self.now, "time goes forward"
        self.now = START + t
        self.engine.advance(self.now)
        self.log.extend(self.engine.take()[0])

    def feed(self, t: float, device: str, readings: list[Reading]) -> None:
        self.at(t)
        stamped = [r._replace(time_ns=int(self.now * 1e9)) for r in readings]
        self.engine.process(device, stamped, self.now)
        self.log.extend(self.engine.take()[0])

    def state(self, t: float, device: str, state: str) -> None:
        self.at(t)
        self.engine.device_state(device, state, self.now)
        self.log.extend(self.engine.take()[0])

    def command(self, action: str, rule: str, device: str) -> AlarmState:
        alarm = self.engine.command(AlarmCommand(AlarmAction(action), rule, device, "test"),
                                    self.now)
        self.log.extend(self.engine.take()[0])
        return alarm.state

    def of(self, rule: str, device: str | None = None) -> list[tuple[str, str, float]]:
        """(cause, state, seconds since START) of every transition of ``rule``."""
        return [(t.cause, str(t.alarm.state), round(t.at - START, 3)) for t in self.log
                if t.alarm.key.rule == rule and device in (None, t.alarm.key.device)]


async def until(readings: Callable[[], list[Reading]], check: Callable[[Reading], bool],
                within: float = 15.0) -> Reading:
    """The first reading after those already there that passes ``check`` (hang guard)."""
    seen = len(readings())
    async with asyncio.timeout(within):
        while True:
            fresh = readings()[seen:]
            for reading in fresh:
                if check(reading):
                    return reading
            seen += len(fresh)
            await asyncio.sleep(0.02)


@pytest.fixture
def pack(tmp_path: Path) -> PackEngine:
    return PackEngine(pack_config(tmp_path, ["粤B7Q5X9", "京C00001"]))


async def test_modbus_meters_water_and_barrier(pack: PackEngine, tmp_path: Path) -> None:
    """ddsu666 (GB/T 12325 limits, loss of supply, reverse energy), the ultrasonic water
    meter (3 h without zero flow, night flow) and the barrier gate (held open), through the
    Modbus driver against a pymodbus simulator; a unit that stops answering goes offline."""
    config = pack_config(tmp_path / "cfg", [])
    points = {d.id: {p.name: p for p in resolve_points(d)[0]} for d in config.devices
              if isinstance(d, ModbusConfig)}
    sims = {1: Device(), 2: Device(), 3: Device()}
    units = Units(sims)
    port = free_port()
    server = TcpSim(units, port)
    await server.start()
    fleet = Fleet({"mb": tcp_bus(port)})
    for device, unit, profile in (("flat-101", 1, "chint-ddsu666"),
                                  ("water-101", 2, "water-meter-ultrasonic"),
                                  ("barrier-1", 3, "barrier-gate-controller")):
        fleet.add(id=device, bus="mb", unit=unit, profile=profile, interval="50ms")

    def put(unit: int, device: str, **values: Any) -> None:
        for name, value in values.items():
            sims[unit].put(points[device][name], value)

    async def live(device: str, **expect: Any) -> list[Reading]:
        """Set nothing; wait for the driver's next reading showing ``expect``."""
        reading = await until(lambda: fleet.readings[device],
                              lambda r: all(r.fields.get(k) == pytest.approx(v)
                                            for k, v in expect.items()))
        return [reading]

    put(1, "flat-101", voltage=221.0, power_active=0.8)
    put(2, "water-101", flow_rate=0.0)
    await fleet.start()
    try:
        # -- supply: over, under, loss, reverse -------------------------------------------
        put(1, "flat-101", voltage=240.5)
        over = await live("flat-101", voltage=240.5)
        pack.feed(10, "flat-101", over)
        pack.at(69)
        assert pack.of("mains-overvoltage") == []
        pack.feed(70, "flat-101", over)  # held 60 s
        assert pack.of("mains-overvoltage") == [("raise", "active_unacked", 70)]
        put(1, "flat-101", voltage=230.0)
        pack.feed(80, "flat-101", await live("flat-101", voltage=230.0))
        put(1, "flat-101", voltage=190.0)
        pack.feed(90, "flat-101", await live("flat-101", voltage=190.0))
        pack.at(151)
        put(1, "flat-101", voltage=0.0)
        pack.feed(200, "flat-101", await live("flat-101", voltage=0.0))
        pack.at(206)
        put(1, "flat-101", voltage=221.5, power_active=-0.4)
        pack.feed(300, "flat-101", await live("flat-101", voltage=221.5, power_active=-0.4))
        pack.at(601)
        put(1, "flat-101", power_active=0.5)
        pack.feed(700, "flat-101", await live("flat-101", power_active=0.5))
        assert pack.of("mains-overvoltage") == [("raise", "active_unacked", 70),
                                                ("clear", "cleared_unacked", 80)]
        assert pack.of("mains-undervoltage") == [("raise", "active_unacked", 150),
                                                 ("clear", "cleared_unacked", 200)]
        assert pack.of("mains-loss") == [("raise", "active_unacked", 205),
                                         ("clear", "cleared_unacked", 300)]
        assert pack.of("reverse-energy") == [("raise", "active_unacked", 600),
                                             ("clear", "cleared_unacked", 700)]
        assert pack.of("mains-overvoltage-dlt645") == []  # another driver's field

        # -- water: flow that never stops for 3 h, night flow ----------------------------
        put(2, "water-101", flow_rate=0.04)
        flowing = await live("water-101", flow_rate=0.04)
        put(2, "water-101", flow_rate=0.0)
        still = await live("water-101", flow_rate=0.0)
        t = 1 * HOUR  # 01:00 local: inside the night span
        for step in range(0, 37):  # every 5 minutes for 3 h
            pack.feed(t + step * 300, "water-101", flowing)
        leak = pack.of("water-leak-continuous")
        assert leak == [("raise", "active_unacked", t + 36 * 300)]
        night = pack.of("water-night-flow")
        assert night == [("raise", "active_unacked", t + 1800)]
        pack.feed(t + 37 * 300, "water-101", still)
        assert pack.of("water-leak-continuous")[1][:2] == ("clear", "cleared_unacked")
        assert pack.of("water-night-flow")[1][:2] == ("clear", "cleared_unacked")

        # -- barrier held open ------------------------------------------------------------
        t = 5 * HOUR
        put(3, "barrier-1", gate_open=True, vehicle_present=True)
        opened = await live("barrier-1", gate_open=True)
        pack.feed(t, "barrier-1", opened)
        pack.at(t + 59)
        assert pack.of("gate-held-open") == []
        pack.at(t + 60)
        assert pack.of("gate-held-open") == [("raise", "active_unacked", t + 60)]
        put(3, "barrier-1", gate_open=False)
        pack.feed(t + 90, "barrier-1", await live("barrier-1", gate_open=False))
        assert pack.of("gate-held-open")[-1] == ("clear", "cleared_unacked", t + 90)

        # -- a meter that stops answering -------------------------------------------------
        units.kill(2)
        async with asyncio.timeout(15):
            while fleet.drivers["water-101"].ctx.status.state is not DeviceState.OFFLINE:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        pack.state(t + 100, "water-101", "offline")
        pack.at(t + 399)
        assert pack.of("device-offline") == []
        pack.at(t + 400)
        units.revive(2)
        async with asyncio.timeout(15):
            while fleet.drivers["water-101"].ctx.status.state is not DeviceState.ONLINE:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        pack.state(t + 500, "water-101", "online")
        assert pack.of("device-offline") == [("raise", "active_unacked", t + 400),
                                             ("clear", "cleared_unacked", t + 500)]
    finally:
        await fleet.stop()
        await server.stop()


async def test_dlt645_meter_supply_and_reverse_power(pack: PackEngine) -> None:
    """The same supply rules for DL/T 645 meters (voltage_a, power_total)."""
    table = POINTS_2007
    meter = Meter645("000012340301", {table["voltage_a"].di: bcd_le("2200", False),
                                      table["power_total"].di: bcd_le("000110", False)})
    with PtySerial(Dlt645Bus([meter])) as pty:
        h = Harness()
        h.add({"id": "b3-0301", "driver": "dlt645", "bus": "line", "address": "000012340301",
               "interval": "100ms", "timeout": "300ms", "points": ["voltage_a", "power_total"]},
              {"port": pty.path, "baudrate": 2400, "parity": "N", "timeout": 0.3})
        h.start()
        try:
            def readings() -> list[Reading]:
                return h.readings.get("b3-0301", [])

            async def value(digits: str, negative: bool, name: str, expect: float
                            ) -> list[Reading]:
                meter.values[table[name].di] = bcd_le(digits, negative)
                return [await until(readings, lambda r: r.fields.get(name) == expect)]

            pack.feed(0, "b3-0301", await value("2410", False, "voltage_a", 241.0))
            pack.at(60)
            pack.feed(70, "b3-0301", await value("2200", False, "voltage_a", 220.0))
            pack.feed(80, "b3-0301", await value("0000", False, "voltage_a", 0.0))
            pack.at(85)
            pack.feed(90, "b3-0301", await value("2200", False, "voltage_a", 220.0))
            pack.feed(100, "b3-0301", await value("000500", True, "power_total", -0.05))
            pack.at(400)
            assert pack.of("mains-overvoltage-dlt645") == [("raise", "active_unacked", 60),
                                                           ("clear", "cleared_unacked", 70)]
            assert pack.of("mains-loss-dlt645") == [("raise", "active_unacked", 85),
                                                    ("clear", "cleared_unacked", 90)]
            assert pack.of("reverse-energy-dlt645") == [("raise", "active_unacked", 400)]
            assert pack.of("mains-overvoltage") == []
        finally:
            await h.stop()


async def test_serial_controllers_doors_cards_and_tamper(pack: PackEngine) -> None:
    """Door controller and card reader records over serial_line: door held open 60 s,
    forced (latched until reset), tamper, and five denied cards within 2 minutes."""
    with PtySerial(Silent()) as door_pty, PtySerial(Silent()) as reader_pty:
        h = Harness()
        h.add({"id": "door-east", "driver": "serial_line", "port": door_pty.path,
               "pattern": r"^EVT:(?P<event>[a-z_]+)$", "measurement": "access_event"})
        h.add({"id": "reader-east", "driver": "serial_line", "port": reader_pty.path,
               "pattern": r"^CARD:(?P<card>\d+);OK:(?P<granted>[01])$",
               "types": {"granted": "bool"}, "measurement": "access_event"})
        h.start()
        try:
            async def record(pty: PtySerial, device: str, line: str) -> list[Reading]:
                n = len(h.readings.get(device, []))
                pty.write(line.encode() + b"\r\n")
                async with asyncio.timeout(10):
                    while len(h.readings.get(device, [])) <= n:  # noqa: ASYNC110
                        await asyncio.sleep(0.02)
                return h.readings[device][n:n + 1]

            await h.wait_for(lambda: all(c.status.state is DeviceState.ONLINE
                                         for c in h.contexts.values()))
            pack.feed(0, "door-east", await record(door_pty, "door-east", "EVT:door_open"))
            pack.feed(30, "door-east", await record(door_pty, "door-east", "EVT:door_closed"))
            pack.feed(40, "door-east", await record(door_pty, "door-east", "EVT:door_open"))
            pack.at(100)
            pack.feed(120, "door-east", await record(door_pty, "door-east", "EVT:door_closed"))
            assert pack.of("door-held-open") == [("raise", "active_unacked", 100),
                                                 ("clear", "cleared_unacked", 120)]

            pack.feed(200, "door-east", await record(door_pty, "door-east", "EVT:door_forced"))
            pack.feed(210, "door-east", await record(door_pty, "door-east", "EVT:door_closed"))
            assert pack.of("door-forced") == [("raise", "active_unacked", 200)]
            assert pack.command("ack", "door-forced", "door-east") is AlarmState.ACTIVE_ACKED
            assert pack.command("reset", "door-forced", "door-east") is AlarmState.NORMAL
            pack.feed(220, "door-east", await record(door_pty, "door-east", "EVT:tamper"))
            assert pack.of("controller-tamper") == [("raise", "active_unacked", 220)]

            denied = await record(reader_pty, "reader-east", "CARD:0004123456;OK:0")
            granted = await record(reader_pty, "reader-east", "CARD:0004123457;OK:1")
            assert denied[0].fields["granted"] is False
            for i in range(4):  # four denied, a granted one between: no alarm yet
                pack.feed(300 + i * 10, "reader-east", denied)
            pack.feed(345, "reader-east", granted)
            pack.feed(500, "reader-east", denied)  # the first four are older than 2 min
            assert pack.of("denied-cards") == []
            for i in range(4):
                pack.feed(510 + i * 20, "reader-east", denied)
            assert pack.of("denied-cards") == [("raise", "active_unacked", 570)]
        finally:
            await h.stop()


@pytest.fixture
def osdp_pty() -> Iterator[tuple[int, str]]:
    with raw_pty() as pair:
        yield pair


async def test_osdp_reader_tamper_and_plate_blocklist(pack: PackEngine, tmp_path: Path,
                                                       osdp_pty: tuple[int, str]) -> None:
    """An OSDP reader (libosdp's peripheral) reports its tamper switch: latched until reset.
    A plate camera message (the demo's simulator) decoded by the MQTT driver: a
    blocklisted plate raises, the next plate clears."""
    from osdp import Event, StatusReportType

    master, path = osdp_pty
    key_file = tmp_path / "scbk"
    key_file.write_text(KEY.hex())
    pd = new_reader(master)
    h = Harness()
    h.add({"id": "reader-north", "driver": "osdp", "port": path, "address": ADDRESS,
           "baudrate": 115200, "key_file": str(key_file)})
    try:
        h.start()
        await h.wait_for(lambda: h.contexts["reader-north"].status.state
                         is DeviceState.ONLINE, within=20)

        def status(tamper: int) -> list[Reading]:
            return [r for r in h.readings.get("reader-north", [])
                    if r.measurement == "reader_status" and r.fields["tamper"] == tamper]

        pd.submit_event({"event": Event.Status, "type": StatusReportType.Local,
                         "report": bytes([1, 0])})
        await h.wait_for(lambda: bool(status(1)))
        pack.feed(0, "reader-north", status(1))
        pd.submit_event({"event": Event.Status, "type": StatusReportType.Local,
                         "report": bytes([0, 0])})
        await h.wait_for(lambda: bool(status(0)))
        pack.feed(10, "reader-north", status(0))
        assert pack.of("reader-tamper") == [("raise", "active_unacked", 0)]
        assert pack.command("reset", "reader-tamper", "reader-north") is AlarmState.NORMAL
    finally:
        await h.stop()
        pd.stop()

    camera = MqttDeviceConfig.model_validate({
        "id": "cam-north", "driver": "mqtt", "profile": "vzicloud-plate",
        "topic": "cameras/device/+sn/message/up/ivs_result"})
    mapper = Mapper(camera)

    def plate(text: str) -> list[Reading]:
        topic = "cameras/device/e5f1a0c3/message/up/ivs_result"
        payload = json.dumps(plate_message("e5f1a0c3", text, "n")).encode()
        tags = mapper.topic_tags(topic)
        assert tags is not None
        return [mapper.decode(tags, payload, 0)]

    pack.feed(100, "cam-north", plate("京A12345"))
    pack.feed(110, "cam-north", plate("粤B7Q5X9"))
    pack.feed(120, "cam-north", plate("京A12345"))
    assert pack.of("plate-blocklisted") == [("raise", "active_unacked", 110),
                                            ("clear", "cleared_unacked", 120)]


def test_pack_loads_with_every_kind_of_device_and_none(tmp_path: Path) -> None:
    """The pack names fields of device kinds a compound may not have: it loads with none
    of them (its rules are optional) and with all of them."""
    config = tmp_path / "gw.yaml"
    (tmp_path / "blocklists").mkdir()
    (tmp_path / "blocklists" / "plates.txt").write_text("")
    config.write_text("gateway: {id: gw-p, site: s, data_dir: data}\n"
                      "sinks: [{type: file}]\nrules_files: ['pack:compound']\ndevices: []\n")
    loaded = load_config(config, environ={})
    assert len(loaded.model.rules) == 18
    assert all(rule.optional for rule in loaded.model.rules)


def test_the_pack_is_also_config_rules_compound_yaml(tmp_path: Path) -> None:
    """config/rules/compound.yaml (where issue 12 and installers look for it) is the
    shipped pack itself, not a copy that could drift: included by path, it gives the
    same rules as ``pack:compound``."""
    root = Path(__file__).resolve().parents[1]
    shipped = root / "config" / "rules" / "compound.yaml"
    assert shipped.resolve() == (root / "gateway" / "alarms" / "packs" / "compound.yaml")
    (tmp_path / "blocklists").mkdir()
    (tmp_path / "blocklists" / "plates.txt").write_text("")
    by_pack, by_path = tmp_path / "pack.yaml", tmp_path / "path.yaml"
    head = "gateway: {id: gw-p, site: s, data_dir: data}\nsinks: [{type: file}]\ndevices: []\n"
    by_pack.write_text(head + "rules_files: ['pack:compound']\n")
    by_path.write_text(head + f"rules_files: ['{shipped}']\n")
    from_pack = load_config(by_pack, environ={}).model.rules
    from_path = load_config(by_path, environ={}).model.rules
    assert [r.id for r in from_path] == [r.id for r in from_pack] and len(from_pack) == 18


def test_the_pack_on_a_config_without_a_blocklist_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by adding ``rules_files: ["pack:compound"]`` to every shipped sample config as
    README suggests: each was refused (exit 2) because ``blocklists/plates.txt`` did not
    exist, though the pack's rules are all optional and the docs say the list "may be
    empty". A missing list of an optional rule is now a warning and an empty list until a
    reload finds the file; a non-optional rule still needs its file."""
    from gateway.cli import main

    config = tmp_path / "gw.yaml"
    config.write_text("gateway: {id: gw-pack, site: s, data_dir: data}\n"
                      "sinks: [{type: file}]\n"
                      "rules_files: ['pack:compound']\n"
                      "devices:\n"
                      "  - {id: m-1, driver: synthetic, interval: 1s, fields: 2}\n")
    assert main(["rules", "check", str(config)]) == 0
    err = capsys.readouterr().err
    assert "plate-blocklisted" in err and "blocklists/plates.txt" in err and "missing" in err
    loaded = load_config(config, environ={})
    (rule,) = [r for r in build_rules(loaded, None) if r.id == "plate-blocklisted"]
    assert rule.lists.raw == {"blocked": frozenset()}
    (tmp_path / "blocklists").mkdir()
    (tmp_path / "blocklists" / "plates.txt").write_text("AB123\n")
    (rule,) = [r for r in build_rules(loaded, None) if r.id == "plate-blocklisted"]
    assert rule.lists.raw == {"blocked": frozenset({"AB123"})}

    config.write_text(config.read_text() + "rules:\n  - {id: own, devices: [m-1], "
                      "when: 'f0 in bl', lists: {bl: {file: nope.txt}}}\n")
    with pytest.raises(SystemExit) as exited:
        main(["rules", "check", str(config)])
    assert exited.value.code == 2
    assert "lists.bl.file: cannot read" in capsys.readouterr().err


def test_plate_blocklist_at_a_barrier_camera_that_posts(pack: PackEngine) -> None:
    """A barrier camera posting to camera_push writes its plates as passages
    (``access_event``, docs/schema.md's contract), not ``vehicle_event``: the blocklist
    rule reads both, and a card event (no plate field) is not evaluated by it."""
    from drivers.camera_push import sim as push_sim
    from drivers.camera_push.config import CameraPushConfig
    from drivers.camera_push.profiles import make_profile

    profile = make_profile(CameraPushConfig.model_validate(
        {"id": "gate-cam", "driver": "camera_push", "profile": "vzenith-plate", "token": "t"}))
    camera = push_sim.PlateCamera(1, "gate-cam", "t")

    def plate(text: str) -> list[Reading]:
        reading = profile.parse("application/json", camera.event(text), 0).reading
        assert reading is not None and reading.measurement == "access_event"
        return [reading]

    card = Reading("access_event", {"kind": "card", "result": "granted"}, {"card": "1"}, 0)
    pack.feed(100, "gate-cam", plate("京A12345"))
    pack.feed(110, "gate-cam", plate("粤B7Q5X9"))
    pack.feed(115, "gate-cam", [card])
    pack.feed(120, "gate-cam", plate("京A12345"))
    assert pack.of("plate-blocklisted") == [("raise", "active_unacked", 110),
                                            ("clear", "cleared_unacked", 120)]
