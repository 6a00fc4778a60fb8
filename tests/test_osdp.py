"""OSDP: libosdp's PeripheralDevice on the far side of a pty, secure channel on."""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from osdp import (
    CardFormat,
    Channel,
    Command,
    Event,
    PeripheralDevice,
    StatusReportType,
)

from drivers.osdp.driver import OsdpDriver
from drivers.osdp.sim import ADDRESS, KEY, new_reader, raw_pty, reader
from gateway.driver import DeviceState
from tests.serial_harness import Harness


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    with raw_pty() as pair:
        yield pair


async def test_card_keypad_tamper_commands_and_reconnect(pty_pair: tuple[int, str],
                                                         tmp_path: Path) -> None:
    master, path = pty_pair
    key_file = tmp_path / "scbk"
    key_file.write_text(KEY.hex())
    pd = new_reader(master)
    h = Harness()
    driver = h.add({"id": "door-1", "driver": "osdp", "port": path, "address": ADDRESS,
                    "baudrate": 115200, "key_file": str(key_file), "reconnect": "1s",
                    "allow_write": ["led", "buzzer"]})
    ctx = h.contexts["door-1"]
    try:
        h.start()
        await h.wait_for(lambda: ctx.status.state is DeviceState.ONLINE)
        assert isinstance(driver, OsdpDriver)
        assert driver._line is not None and driver._line.panel is not None
        assert driver._line.panel.secure_channel(ADDRESS)

        pd.submit_event({"event": Event.CardRead, "reader_no": 1, "direction": 0,
                         "length": 26, "format": CardFormat.Wiegand,
                         "data": bytes([0x12, 0x34, 0x56, 0x40])})
        pd.submit_event({"event": Event.KeyPress, "reader_no": 1,
                         "data": bytes([0x31, 0x32, 0x7F])})
        await h.wait_for(lambda: len(h.readings.get("door-1", [])) >= 2)
        card, keys = h.readings["door-1"][:2]
        assert card.measurement == "access_event"
        assert dict(card.tags) == {"reader": "1", "kind": "card"}
        assert dict(card.fields) == {"card": "12345640", "bits": 26}
        assert dict(keys.fields) == {"keys": "12*"}

        pd.submit_event({"event": Event.Status, "type": StatusReportType.Local,
                         "report": bytes([1, 0])})
        await h.wait_for(lambda: ctx.status.state is DeviceState.ERROR)
        assert ctx.status.last_error == "tamper"
        pd.submit_event({"event": Event.Status, "type": StatusReportType.Local,
                         "report": bytes([0, 0])})
        await h.wait_for(lambda: ctx.status.state is DeviceState.ONLINE)
        status = [r for r in h.readings["door-1"] if r.measurement == "reader_status"]
        assert [dict(r.fields) for r in status] == [{"tamper": 1, "power_failure": 0},
                                                   {"tamper": 0, "power_failure": 0}]

        assert await driver.write("led", {"color": "red", "seconds": 3}) == {"submitted": "led"}
        command = pd.get_command(timeout=3)
        assert command["command"] == Command.LED and command["timer_count"] == 30

        pd.stop()  # the reader loses power
        await h.wait_for(lambda: ctx.status.state is DeviceState.OFFLINE, within=20)
        pd = new_reader(master)  # ... and boots again
        await h.wait_for(lambda: ctx.status.state is DeviceState.ONLINE, within=20)
        assert ctx.status.counters["offline"] >= 1
    finally:
        await h.stop()
        pd.stop()


async def test_clean_start_logs_the_secure_channel(
        pty_pair: tuple[int, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The README promises the secure channel coming up in the log, the first time too."""
    caplog.set_level(logging.INFO, logger="iotgw.device.door-1")
    master, path = pty_pair
    key_file = tmp_path / "scbk"
    key_file.write_text(KEY.hex())
    pd = new_reader(master)
    h = Harness()
    h.add({"id": "door-1", "driver": "osdp", "port": path, "address": ADDRESS,
           "baudrate": 115200, "key_file": str(key_file), "reconnect": "1s"})
    ctx = h.contexts["door-1"]
    try:
        h.start()
        await h.wait_for(lambda: ctx.status.state is DeviceState.ONLINE)
        assert ctx.status.last_error is None
        online = [r for r in caplog.records if "reader online" in r.getMessage()]
        assert [(r.levelno, r.getMessage()) for r in online] == [
            (logging.INFO, "device door-1: reader online, secure channel active")]
    finally:
        await h.stop()
        pd.stop()


async def test_wrong_key_is_a_refused_secure_channel_not_silence(
        pty_pair: tuple[int, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reader answers and libosdp refuses its cryptogram: that is an error naming the
    key, not "reader does not answer"; the right key then brings it online."""
    caplog.set_level(logging.INFO, logger="iotgw.device.door-1")
    master, path = pty_pair
    key_file = tmp_path / "scbk"
    key_file.write_text(KEY.hex())
    pd = new_reader(master, key=bytes(range(100, 116)))  # commissioned with another key
    h = Harness()
    # 2 s between attempts: the reader answers osdp_ID in milliseconds, even on a busy host
    h.add({"id": "door-1", "driver": "osdp", "port": path, "address": ADDRESS,
           "baudrate": 115200, "key_file": str(key_file), "reconnect": "2s"})
    ctx = h.contexts["door-1"]
    try:
        h.start()
        await h.wait_for(lambda: ctx.status.state in (DeviceState.ERROR, DeviceState.OFFLINE,
                                                      DeviceState.ONLINE), within=30)
        # The first verdict is the right one: never reported as a silent reader first.
        assert ctx.status.state is DeviceState.ERROR, h.states()
        assert ctx.status.counters == {"secure_channel_refused": 1}
        last_error = ctx.status.last_error or ""
        assert last_error.startswith("secure_channel_refused: ")
        assert "secure channel was refused" in last_error and "key" in last_error
        # Later attempts are counted and logged once.
        await h.wait_for(lambda: ctx.status.counters["secure_channel_refused"] >= 3, within=30)
        assert ctx.status.state is DeviceState.ERROR
        refused = [r for r in caplog.records if "secure channel was refused" in r.getMessage()]
        assert [r.levelno for r in refused] == [logging.ERROR]

        pd.stop()
        pd = new_reader(master)  # re-commissioned with our key
        await h.wait_for(lambda: ctx.status.state is DeviceState.ONLINE, within=20)
        assert ctx.status.last_error is None
        assert any(r.levelno == logging.INFO and "reader online, secure channel active" in
                   r.getMessage() for r in caplog.records)
    finally:
        await h.stop()
        pd.stop()


def test_secure_needs_a_key() -> None:
    from drivers.osdp.config import OsdpConfig

    with pytest.raises(ValueError, match="key_file"):
        OsdpConfig.model_validate({"id": "r", "driver": "osdp", "port": "/dev/null"})


# -- multi-drop: several readers on one RS-485 line ----------------------------------------

class SharedLine:
    """An RS-485 line on the master end of a pty: every byte the control panel sends
    reaches every reader, and every byte a reader sends reaches the panel and the other
    readers (one half-duplex pair, as on the wire)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.inboxes: list[bytearray] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="rs485-line", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while not self.stopped.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 4096)
            except (BlockingIOError, OSError):
                continue
            with self.lock:
                for inbox in self.inboxes:
                    inbox.extend(data)

    def channel(self) -> Channel:
        inbox = bytearray()
        with self.lock:
            self.inboxes.append(inbox)
        return _LineChannel(self, inbox)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()


class _LineChannel(Channel):
    def __init__(self, line: SharedLine, inbox: bytearray) -> None:
        super().__init__()
        self.line, self.inbox = line, inbox

    def read(self, max_bytes: int) -> bytes:
        with self.line.lock:
            data = bytes(self.inbox[:max_bytes])
            del self.inbox[:max_bytes]
        return data

    def write(self, buf: bytes) -> int:
        with self.line.lock:
            os.write(self.line.fd, buf)
            for inbox in self.line.inboxes:
                if inbox is not self.inbox:
                    inbox.extend(buf)
        return len(buf)

    def flush(self) -> None:
        pass


def reader_on(line: SharedLine, address: int, key: bytes) -> PeripheralDevice:
    return reader(line.channel(), key=key, address=address)


async def test_two_readers_on_one_line_are_independent_devices(pty_pair: tuple[int, str],
                                                               tmp_path: Path
                                                                ) -> None:
    master, path = pty_pair
    line = SharedLine(master)
    keys = {101: KEY, 102: bytes(range(16, 32))}  # each reader its own secure channel key
    readers = {a: reader_on(line, a, k) for a, k in keys.items()}
    h = Harness()
    for number, address in ((1, 101), (2, 102)):
        key_file = tmp_path / f"scbk-{address}"
        key_file.write_text(keys[address].hex())
        h.add({"id": f"door-{number}", "driver": "osdp", "port": path, "address": address,
               "baudrate": 115200, "key_file": str(key_file), "reconnect": "1s"})
    door1, door2 = h.contexts["door-1"], h.contexts["door-2"]
    try:
        h.start()
        await h.wait_for(lambda: door1.status.state is DeviceState.ONLINE
                         and door2.status.state is DeviceState.ONLINE, within=20)
        door1_driver, door2_driver = h.drivers["door-1"], h.drivers["door-2"]
        assert isinstance(door1_driver, OsdpDriver) and isinstance(door2_driver, OsdpDriver)
        line_resource = door1_driver._line
        assert line_resource is not None and line_resource is door2_driver._line
        assert line_resource.panel is not None
        assert line_resource.panel.secure_channel(101)
        assert line_resource.panel.secure_channel(102)

        # Events land on the device of the reader that produced them.
        readers[102].submit_event({"event": Event.CardRead, "reader_no": 0, "direction": 0,
                                   "length": 32, "format": CardFormat.Wiegand,
                                   "data": bytes([0xDE, 0xAD, 0xBE, 0xEF])})
        readers[101].submit_event({"event": Event.KeyPress, "reader_no": 0,
                                   "data": bytes([0x39, 0x0D])})
        await h.wait_for(lambda: bool(h.readings.get("door-1") and h.readings.get("door-2")))
        assert [dict(r.fields) for r in h.readings["door-2"]] == [{"card": "DEADBEEF",
                                                                  "bits": 32}]
        assert [dict(r.fields) for r in h.readings["door-1"]] == [{"keys": "9#"}]

        # A command reaches only the reader it was sent to.
        assert await h.drivers["door-2"].write("buzzer", 3) == {"submitted": "buzzer"}
        command = readers[102].get_command(timeout=3)
        assert command["command"] == Command.Buzzer and command["rep_count"] == 3
        assert readers[101].get_command(timeout=1) is None

        # Reader 102 loses power: door-2 goes offline, door-1 keeps working.
        readers[102].stop()
        await h.wait_for(lambda: door2.status.state is DeviceState.OFFLINE, within=20)
        readers[101].submit_event({"event": Event.KeyPress, "reader_no": 0,
                                   "data": bytes([0x31])})
        await h.wait_for(lambda: len(h.readings["door-1"]) == 2)
        assert door1.status.state is DeviceState.ONLINE

        # ... and boots again: back online, without disturbing reader 101.
        readers[102] = reader_on(line, 102, keys[102])
        await h.wait_for(lambda: door2.status.state is DeviceState.ONLINE, within=20)
        assert door2.status.counters["offline"] >= 1
        assert door1.status.counters.get("offline", 0) == 0
        assert door1.status.state is DeviceState.ONLINE
    finally:
        await h.stop()
        for pd in readers.values():
            pd.stop()
        line.close()
