"""A line-printing serial device for this driver's tests and the demo: a gate card reader
on its own pseudo-terminal, printing one CRLF-terminated ``CARD:<number>;DIR:IN|OUT``
record per swipe.

The driver never imports it. Tests that need a device answering requests use
drivers/serialbus/sim.py's :class:`~drivers.serialbus.sim.PtySerial` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random

from drivers.serialbus.sim import Pty

__all__ = ["CardReader"]


class CardReader:
    """A gate reader on its own pty, printing one CRLF-terminated record per swipe, every
    ``every`` seconds (+-50%), in the current event loop until cancelled."""

    def __init__(self, cards: list[str], every: float = 4.0) -> None:
        self.pty = Pty()
        self.path = self.pty.path
        self.cards = cards
        self.every = every
        self.swipes = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pty.master, self._drain)
        try:
            await asyncio.sleep(1.0)
            while True:
                card = random.choice(self.cards)
                direction = random.choice(("IN", "OUT"))
                self.pty.write(f"CARD:{card};DIR:{direction}\r\n".encode())
                self.swipes += 1
                await asyncio.sleep(self.every * random.uniform(0.5, 1.5))
        finally:
            loop.remove_reader(self.pty.master)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.pty.master, 4096)

    def close(self) -> None:
        self.pty.close()


class DoorController:
    """A door controller on its own pty printing ``EVT:door_open`` / ``EVT:door_closed``:
    brief openings every ``every`` seconds, and once, ``hold_at`` seconds after the
    start, the door held open for ``hold_for`` seconds (someone wedged it)."""

    def __init__(self, hold_at: float = 6.0, hold_for: float = 75.0,
                 every: float = 15.0) -> None:
        self.pty = Pty()
        self.path = self.pty.path
        self.hold_at = hold_at
        self.hold_for = hold_for
        self.every = every
        self.events = 0

    def _event(self, name: str) -> None:
        self.pty.write(f"EVT:{name}\r\n".encode())
        self.events += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pty.master, self._drain)
        try:
            await asyncio.sleep(self.hold_at)
            self._event("door_open")
            await asyncio.sleep(self.hold_for)
            self._event("door_closed")
            while True:
                await asyncio.sleep(self.every * random.uniform(0.5, 1.5))
                self._event("door_open")
                await asyncio.sleep(3)
                self._event("door_closed")
        finally:
            loop.remove_reader(self.pty.master)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.pty.master, 4096)

    def close(self) -> None:
        self.pty.close()
