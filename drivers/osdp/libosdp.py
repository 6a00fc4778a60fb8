"""The only module that imports libosdp (``osdp``, the reference OSDP implementation).

``OsdpPanel`` is libosdp's ControlPanel for the readers on one of the project's serial
channels (pyserial stays in drivers/serialbus/port.py); libosdp failures to start become
``PortError`` (retryable, like a port that cannot be opened). The enums the rest of the
driver needs (events, card formats, commands) are re-exported from here, so a libosdp
upgrade that moves them touches this file only.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from osdp import (
    CardFormat,
    Channel,
    Command,
    CommandLEDColor,
    ControlPanel,
    Event,
    LibFlag,
    LogLevel,
    PDInfo,
    StatusReportType,
)

from drivers.serialbus.port import PortError, RawChannel

__all__ = ["CardFormat", "Command", "CommandLEDColor", "Event", "OsdpPanel", "ReaderSpec",
           "StatusReportType"]


class _Channel(Channel):
    """libosdp's channel interface over the project's one pyserial wrapper."""

    def __init__(self, raw: RawChannel) -> None:
        super().__init__()
        self.raw = raw

    def read(self, max_bytes: int) -> bytes:
        return self.raw.read(max_bytes)

    def write(self, buf: bytes) -> int:
        return self.raw.write(buf)

    def flush(self) -> None:
        self.raw.flush()


@dataclass(frozen=True)
class ReaderSpec:
    """One reader (PD) as the control panel must know it."""

    address: int
    name: str
    scbk: bytes | None
    secure: bool
    install_mode: bool

    def flags(self) -> list[Any]:
        return [flag for on, flag in ((self.secure, LibFlag.EnforceSecure),
                                      (self.install_mode, LibFlag.InstallMode)) if on]


class OsdpPanel:
    """A started libosdp control panel for every reader on one RS-485 line.

    OSDP is multi-drop: the readers share the line and libosdp polls them in turn over
    one channel (they all get channel id 0, so libosdp serialises them on it). Blocking
    calls (the constructor, ``close``): run them in a thread. libosdp logs at error level
    only: its debug output would print packet contents (card numbers)."""

    def __init__(self, raw: RawChannel, readers: Sequence[ReaderSpec]) -> None:
        channel = _Channel(raw)
        infos = [PDInfo(r.address, channel, scbk=r.scbk, flags=r.flags(), name=r.name)
                 for r in readers]
        self._index = {r.address: i for i, r in enumerate(readers)}
        try:
            self._cp = ControlPanel(infos, log_level=LogLevel.Error)
            self._cp.start()
        except (RuntimeError, ValueError, TypeError) as exc:
            raise PortError(f"libosdp could not start the control panel: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):  # tearing down a half-started panel
            self._cp.teardown()

    def online(self, address: int) -> bool:
        return bool(self._cp.is_online(address))

    def secure_channel(self, address: int) -> bool:
        return bool(self._cp.is_sc_active(address))

    def identity(self, address: int) -> tuple[int, ...] | None:
        """The reader's identity from its last osdp_PDID reply (vendor, model, version,
        serial, firmware), or None when it has not answered osdp_ID since this panel was
        built. libosdp keeps it after the reader falls silent: it proves the reader
        answered at some time, not that it answers now."""
        pd_id = self._cp.get_pd_id(address)
        identity = (pd_id.vendor_code, pd_id.model, pd_id.version, pd_id.serial_number,
                    pd_id.firmware_version)
        return identity if any(identity) else None

    def next_event(self, address: int) -> dict[str, Any] | None:
        """The oldest event libosdp has queued for that reader, or None."""
        try:
            return self._cp.event_queue[self._index[address]].get_nowait()
        except queue.Empty:
            return None

    def submit(self, address: int, command: dict[str, Any]) -> bool:
        """False when libosdp refuses it (queue full, not supported by the reader)."""
        return bool(self._cp.submit_command(address, command))

    def restart(self, address: int) -> None:
        """Forget one reader's session and contact it again now (libosdp otherwise waits
        minutes before retrying an offline reader, and a rebooted reader no longer knows
        the old sequence numbers); the other readers on the line are not disturbed."""
        self._cp.disable_pd(address)
        self._cp.enable_pd(address)
