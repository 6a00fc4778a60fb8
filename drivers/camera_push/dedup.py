"""Retried posts answered once: the device's own event id -> the answer it was given.

A camera that got no answer (a timeout, a dropped connection, a gateway killed between
the commit and the answer) posts the same event again. The retry gets the first answer
and nothing is stored twice; a retry that arrives while the first post still waits for
its commit waits for the same commit. Memory is bounded (``size`` ids per device, oldest
forgotten first).

The ids survive a restart: each committed id is appended, with its answer, to a small
journal per device (``<data_dir>/camera_push/<device>.ids``, mode 0600, fsynced before
the device is answered, compacted to the newest ``size`` when it reaches twice that).
Without it a retry after a restart was stored again, and not as an overwrite: a device
that sends no time of its own gets the arrival time, and VictoriaMetrics keeps every
sample even at one timestamp (found by the outside probe: kill -9, restart, retry = two
events). A journal that cannot be written (disk full) costs only this protection across
restarts; the post is still answered (it is committed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections import OrderedDict
from pathlib import Path

from drivers.camera_push.payload import Answer


class Dedup:
    def __init__(self, size: int, journal: Path | None = None) -> None:
        self.size = size
        self.journal = journal
        self._done: OrderedDict[str, Answer] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Answer]] = {}
        self._lines = 0
        self._lock = asyncio.Lock()
        self.load_error: str | None = None
        if journal is not None:
            self._load(journal)

    # -- the journal -----------------------------------------------------------------------

    def _load(self, journal: Path) -> None:
        try:
            text = journal.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            self.load_error = f"cannot read {journal}: {exc}"
            return
        for line in text.splitlines():
            try:  # a torn last line (power cut mid-append) is skipped
                doc = json.loads(line)
                answer = Answer(int(doc["s"]), base64.b64decode(doc["b"]), str(doc["t"]))
                key = str(doc["k"])
            except (ValueError, KeyError, TypeError):
                continue
            self._remember(key, answer)
            self._lines += 1

    @staticmethod
    def _line(key: str, answer: Answer) -> bytes:
        return json.dumps({"k": key, "s": answer.status, "t": answer.content_type,
                           "b": base64.b64encode(answer.body).decode("ascii")},
                          separators=(",", ":")).encode() + b"\n"

    def _append(self, line: bytes) -> None:
        assert self.journal is not None
        self.journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _compact(self) -> None:
        """Rewrite the journal with the ids still remembered (write, fsync, rename)."""
        assert self.journal is not None
        tmp = self.journal.with_suffix(".ids.tmp")
        data = b"".join(self._line(k, a) for k, a in self._done.items())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.journal)
        with contextlib.suppress(OSError):
            dfd = os.open(self.journal.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._lines = len(self._done)

    async def persist(self, key: str, answer: Answer) -> None:
        """Journal a committed id before its answer goes out. Raises OSError."""
        if self.journal is None:
            return
        async with self._lock:
            await asyncio.to_thread(self._append, self._line(key, answer))
            self._lines += 1
            if self._lines >= 2 * self.size:
                await asyncio.to_thread(self._compact)

    # -- in memory -------------------------------------------------------------------------

    def _remember(self, key: str, answer: Answer) -> None:
        self._done[key] = answer
        self._done.move_to_end(key)
        while len(self._done) > self.size:
            self._done.popitem(last=False)

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
            self._remember(key, answer)
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
