"""OSDP: libosdp's PeripheralDevice on the far side of a pty, secure channel on."""

from __future__ import annotations

import fcntl
import os
import tty
from pathlib import Path

import pytest
from osdp import (
    Capability,
    CardFormat,
    Channel,
    Command,
    Event,
    LibFlag,
    LogLevel,
    PDCapabilities,
    PDInfo,
    PeripheralDevice,
    StatusReportType,
)

from gateway.driver import DeviceState
from tests.serial_harness import Harness

KEY = bytes(range(16))
ADDRESS = 101


class MasterChannel(Channel):
    """The PD's end of the pty (the reader's RS-485 transceiver)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def read(self, max_bytes: int) -> bytes:
        try:
            return os.read(self.fd, max_bytes)
        except (BlockingIOError, OSError):
            return b""

    def write(self, buf: bytes) -> int:
        return os.write(self.fd, buf)

    def flush(self) -> None:
        pass


def new_reader(fd: int) -> PeripheralDevice:
    """A freshly booted reader (new state, same key)."""
    pd = PeripheralDevice(
        PDInfo(ADDRESS, MasterChannel(fd), scbk=KEY, flags=[LibFlag.EnforceSecure]),
        PDCapabilities([(Capability.LEDControl, 1, 1), (Capability.AudibleControl, 1, 1)]),
        log_level=LogLevel.Error)
    pd.start()
    return pd


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    flags = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


async def test_card_keypad_tamper_commands_and_reconnect(pty_pair, tmp_path: Path) -> None:
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
        assert driver._cp is not None and driver._cp.secure_channel

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


def test_secure_needs_a_key() -> None:
    from drivers.osdp.config import OsdpConfig

    with pytest.raises(ValueError, match="key_file"):
        OsdpConfig.model_validate({"id": "r", "driver": "osdp", "port": "/dev/null"})
