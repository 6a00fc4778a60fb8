"""The only module that imports libosdp (``osdp``, the reference OSDP implementation).

``ReaderPanel`` is libosdp's ControlPanel for one reader on one of the project's serial
channels (pyserial stays in drivers/serialbus/port.py); libosdp failures to start become
``PortError`` (retryable, like a port that cannot be opened). The enums the rest of the
driver needs (events, card formats, commands) are re-exported from here, so a libosdp
upgrade that moves them touches this file only.
"""

from __future__ import annotations

import contextlib
import queue
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

__all__ = ["CardFormat", "Command", "CommandLEDColor", "Event", "ReaderPanel",
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


class ReaderPanel:
    """A started libosdp control panel for the reader at ``address`` on ``raw``.

    Blocking calls (start, teardown): run them in a thread. libosdp logs at error level
    only: its debug output would print packet contents (card numbers)."""

    def __init__(self, raw: RawChannel, address: int, name: str, *, scbk: bytes | None,
                 secure: bool, install_mode: bool) -> None:
        flags = []
        if secure:
            flags.append(LibFlag.EnforceSecure)
        if install_mode:
            flags.append(LibFlag.InstallMode)
        self.address = address
        info = PDInfo(address, _Channel(raw), scbk=scbk, flags=flags, name=name)
        try:
            self._cp = ControlPanel([info], log_level=LogLevel.Error)
            self._cp.start()
        except (RuntimeError, ValueError, TypeError) as exc:
            raise PortError(f"libosdp could not start the control panel: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):  # tearing down a half-started panel
            self._cp.teardown()

    @property
    def online(self) -> bool:
        return bool(self._cp.is_online(self.address))

    @property
    def secure_channel(self) -> bool:
        return bool(self._cp.is_sc_active(self.address))

    def next_event(self) -> dict[str, Any] | None:
        """The oldest event libosdp has queued, or None."""
        try:
            return self._cp.event_queue[0].get_nowait()
        except queue.Empty:
            return None

    def submit(self, command: dict[str, Any]) -> bool:
        """False when libosdp refuses it (queue full, not supported by the reader)."""
        return bool(self._cp.submit_command(self.address, command))
