"""An OSDP reader for tests and the demo: libosdp's own PeripheralDevice on the far end
of a pseudo-terminal, secure channel on.

The driver talks to libosdp only through drivers/osdp/libosdp.py; this simulator is the
other side of the wire (a real reader's firmware), so it uses libosdp's peripheral API
directly. Nothing in the driver imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tty
from collections.abc import Iterator, Sequence

from osdp import (
    Capability,
    Channel,
    LibFlag,
    LogLevel,
    PDCapabilities,
    PDInfo,
    PeripheralDevice,
)

KEY = bytes(range(16))
ADDRESS = 101
CARD_AND_KEYPAD = ((Capability.LEDControl, 1, 1), (Capability.AudibleControl, 1, 1))


class PtyChannel(Channel):
    """The reader's end of the pty (its RS-485 transceiver)."""

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


def reader(channel: Channel, key: bytes = KEY, address: int = ADDRESS,
           capabilities: Sequence[tuple[Capability, int, int]] = CARD_AND_KEYPAD
           ) -> PeripheralDevice:
    """A freshly booted reader on ``channel`` (new state; the same key unless told)."""
    pd = PeripheralDevice(
        PDInfo(address, channel, scbk=key, flags=[LibFlag.EnforceSecure]),
        PDCapabilities(list(capabilities)), log_level=LogLevel.Error)
    pd.start()
    return pd


def new_reader(fd: int, key: bytes = KEY, address: int = ADDRESS,
               capabilities: Sequence[tuple[Capability, int, int]] = CARD_AND_KEYPAD
               ) -> PeripheralDevice:
    """A freshly booted reader alone on the pty ``fd``."""
    return reader(PtyChannel(fd), key, address, capabilities)


@contextlib.contextmanager
def raw_pty() -> Iterator[tuple[int, str]]:
    """(reader's fd, the gateway's port path): a raw, non-blocking pty pair."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    flags = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)
