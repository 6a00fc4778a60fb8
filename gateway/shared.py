"""Objects shared by several devices, created on first use and closed after the last.

Several meters on one RS-485 line must share one open port and one scheduler; several
Modbus units behind one TCP gateway share one connection. Devices come and go on reload,
so sharing is reference counted: the resource closes when its last device stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, Protocol


class Closable(Protocol):
    async def close(self) -> None: ...


class SharedResources:
    def __init__(self) -> None:
        self._items: dict[Hashable, tuple[Any, int]] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self, key: Hashable, factory: Callable[[], Awaitable[Closable]]
                  ) -> AsyncIterator[Any]:
        """``async with resources.use(("modbus", "rs485-a"), make_bus) as bus: ...``"""
        async with self._lock:
            if key in self._items:
                item, users = self._items[key]
            else:
                item, users = await factory(), 0
            self._items[key] = (item, users + 1)
        try:
            yield item
        finally:
            async with self._lock:
                item, users = self._items[key]
                if users <= 1:
                    del self._items[key]
                    await item.close()
                else:
                    self._items[key] = (item, users - 1)

    def active(self) -> list[Hashable]:
        return list(self._items)
