"""Retried posts answered once: the device's own event id -> the answer it was given.

A camera that got no answer (a timeout, a dropped connection) posts the same event
again. Within one run the retry gets the first answer and nothing is stored twice;
a retry that arrives while the first post still waits for its commit waits for the
same commit. Memory is bounded (``size`` ids per device, oldest forgotten first).

Across a gateway restart the ids are forgotten; a retry after a restart is stored
again, with the same time, tags and fields, and a store keeps one point per series and
time, so it overwrites the first copy instead of adding an event.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from drivers.camera_push.payload import Answer


class Dedup:
    def __init__(self, size: int) -> None:
        self.size = size
        self._done: OrderedDict[str, Answer] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Answer]] = {}

    def answered(self, key: str) -> Answer | None:
        answer = self._done.get(key)
        if answer is not None:
            self._done.move_to_end(key)
        return answer

    def pending(self, key: str) -> asyncio.Future[Answer] | None:
        return self._pending.get(key)

    def begin(self, key: str) -> asyncio.Future[Answer]:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        return future

    def finish(self, key: str, answer: Answer | None, error: BaseException | None) -> None:
        """Record the committed answer (or wake waiters with the failure: they answer
        the device with it, and the device's next retry starts afresh)."""
        future = self._pending.pop(key, None)
        if answer is not None:
            self._done[key] = answer
            while len(self._done) > self.size:
                self._done.popitem(last=False)
        if future is not None and not future.done():
            if answer is not None:
                future.set_result(answer)
            elif isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(error or RuntimeError("post failed"))
                future.exception()  # retrieved: no "never retrieved" warning without waiters

    def __len__(self) -> int:
        return len(self._done)
