"""One RS-485 line of OSDP readers: the port and one control panel shared by every reader
device configured on that port (``SharedResources`` key ``("osdp", port)``).

OSDP is a multi-drop protocol: a door controller's line typically carries several readers
(entry and exit, a gate's two lanes) at different addresses. Each reader is still its own
device (own id, state, counters, allow-list); the line owns what they share. libosdp takes
the whole reader list when a panel is built, so a reader joining or leaving (start,
reload) rebuilds the panel; a single reader that went offline is restarted on its own
(``OsdpPanel.restart``) so the others keep their sessions.
"""

from __future__ import annotations

import asyncio

from drivers.osdp.libosdp import OsdpPanel, ReaderSpec
from drivers.serialbus.port import PortError, PortSettings, RawChannel


class OsdpLine:
    def __init__(self, port: str, baudrate: int) -> None:
        self.port = port
        self.baudrate = baudrate
        self.readers: dict[int, ReaderSpec] = {}
        self.panel: OsdpPanel | None = None
        self.generation = 0
        """Bumped by every rebuild: a reader that saw a failure asks for a rebuild of the
        generation it saw, so several readers noticing one failure cause one rebuild."""
        self._raw: RawChannel | None = None
        self._lock = asyncio.Lock()

    @property
    def failure(self) -> str | None:
        """Why the port stopped working (read/write failed), or None."""
        return self._raw.failure if self._raw is not None else None

    async def join(self, reader: ReaderSpec) -> None:
        """Add a reader; raises PortError when the port cannot be opened."""
        async with self._lock:
            self.readers[reader.address] = reader
            await self._rebuild()

    async def leave(self, address: int) -> None:
        """Remove a reader. Runs in a stopping device's ``finally``: reopening the port
        for the readers left may fail (the port is gone), and that failure is theirs to
        see and retry (``panel`` stays None, so they rebuild). Raising it here replaced
        the stop's cancellation, and the supervisor restarted the stopping device
        instead of letting it end: SIGTERM hung (found by tests/test_config_fuzz.py)."""
        async with self._lock:
            if self.readers.pop(address, None) is not None:
                try:
                    await self._rebuild()
                except PortError:
                    pass

    async def rebuild(self, seen_generation: int) -> None:
        """Reopen the port and the panel, unless another reader already did since."""
        async with self._lock:
            if self.generation == seen_generation:
                await self._rebuild()

    async def close(self) -> None:
        async with self._lock:
            self.readers.clear()
            await asyncio.to_thread(self._close)

    async def _rebuild(self) -> None:
        self.generation += 1
        await asyncio.to_thread(self._close)
        if self.readers:
            await asyncio.to_thread(self._open, list(self.readers.values()))

    def _open(self, readers: list[ReaderSpec]) -> None:
        raw = RawChannel(PortSettings(self.port, self.baudrate))
        try:
            self.panel = OsdpPanel(raw, readers)
        except BaseException:
            raw.close()
            raise
        self._raw = raw

    def _close(self) -> None:
        panel, raw = self.panel, self._raw
        self.panel = self._raw = None
        if panel is not None:
            panel.close()
        if raw is not None:
            raw.close()
