"""File sink: appends line protocol to rotating local files.

The default when no sink is configured, so a fresh install keeps its data somewhere
readable (and replayable with ``curl --data-binary @file``) before anyone sets up a
database. Disk work runs in a worker thread so a slow SD card never stalls the loop.

Layout in ``directory``: ``current.lp`` takes appends; when the next batch would push it
past ``max_file_size`` it is renamed to ``lines-YYYYmmddTHHMMSS-<seq>.lp`` (UTC) and the
oldest rotated files beyond ``max_files`` are deleted. ``<seq>`` increases across restarts
and decides which file is oldest, so a clock that jumps backwards (boards without an RTC)
cannot make the gateway delete its newest data.

Files are created 0600 and a directory the sink creates 0700, whatever the umask
(:mod:`gateway.private`): the lines are the same readings the buffer protects.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.config.types import ByteSize
from gateway.errors import SinkUnavailable
from gateway.private import make_dirs, open_private
from gateway.sinks import register_sink
from gateway.sinks.base import SinkConfigBase

CURRENT_NAME = "current.lp"
ROTATED = re.compile(r"^lines-\d{8}T\d{6}-(\d+)\.lp$")


class FileSinkConfig(SinkConfigBase):
    """Line protocol files on local disk."""

    type: Literal["file"] = "file"
    directory: Path | None = Field(default=None,
                                   description="default: <data_dir>/lines; relative to data_dir")
    max_file_size: ByteSize = Field(default=64 * 1024**2, ge=1, le=1024**4)
    max_files: int = Field(
        default=10, ge=0, le=100_000,
        description="rotated files kept besides current.lp; oldest deleted"
    )
    fsync: bool = True


class FileSink:
    """Appends each batch (plus a newline) to ``current.lp``; rotates by size.

    A batch is never split across files. A single batch bigger than ``max_file_size`` gets
    a file of its own rather than an error, because no amount of retrying could fit it.
    A failed append is truncated away so a retry after ENOSPC does not leave half a batch
    followed by the whole batch again.
    """

    def __init__(self, config: FileSinkConfig, data_dir: Path) -> None:
        self.name = config.sink_name
        # relative to data_dir like the buffer, never to whatever the process's cwd is
        directory = config.directory or Path("lines")
        self.directory = directory if directory.is_absolute() else Path(data_dir) / directory
        self._config = config
        self._current = self.directory / CURRENT_NAME
        self._size: int | None = None
        self._next_seq = 0
        self._lock = threading.Lock()  # a cancelled await does not stop its thread

    async def open(self) -> None:
        await self._in_thread(self._open_sync)

    async def write(self, payload: bytes) -> None:
        if not payload.strip():
            return
        data = payload if payload.endswith(b"\n") else payload + b"\n"
        await self._in_thread(self._write_sync, data)

    async def close(self) -> None:
        """Nothing is held open between writes: each append opens, writes and closes."""

    def rotated_files(self) -> list[Path]:
        """Rotated files, oldest first (by sequence number, not by clock)."""
        found = []
        for path in self.directory.iterdir():
            match = ROTATED.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    async def _in_thread(self, func: Callable[..., object], *args: object) -> None:
        try:
            await asyncio.to_thread(func, *args)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            where = exc.filename or self.directory
            raise SinkUnavailable(f"{where}: {reason}") from exc

    def _open_sync(self) -> None:
        with self._lock:
            self._ensure_ready()

    def _ensure_ready(self) -> None:
        """Learn the current size and next sequence number (once, or after a failure)."""
        if self._size is not None:
            return
        make_dirs(self.directory)
        rotated = self.rotated_files()
        last = ROTATED.match(rotated[-1].name) if rotated else None
        self._next_seq = int(last.group(1)) + 1 if last else 1
        try:
            self._size = self._current.stat().st_size
        except FileNotFoundError:
            self._size = 0

    def _write_sync(self, data: bytes) -> None:
        with self._lock:
            try:
                self._ensure_ready()
                assert self._size is not None
                if self._size > 0 and self._size + len(data) > self._config.max_file_size:
                    self._rotate()
                self._append(data)
            except OSError:
                self._size = None  # re-read the disk state next time
                raise

    def _append(self, data: bytes) -> None:
        fd = open_private(self._current, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "ab") as f:
            start = f.tell()
            try:
                f.write(data)
                f.flush()
                if self._config.fsync:
                    os.fsync(f.fileno())
            except OSError:
                try:  # best effort: drop the partial batch so a retry is clean
                    f.truncate(start)
                except OSError:
                    pass
                raise
        self._size = start + len(data)

    def _rotate(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = self.directory / f"lines-{stamp}-{self._next_seq:06d}.lp"
        os.replace(self._current, target)
        self._next_seq += 1
        self._size = 0
        if self._config.fsync:
            self._fsync_directory()
        rotated = self.rotated_files()
        for old in rotated[: max(0, len(rotated) - self._config.max_files)]:
            old.unlink(missing_ok=True)

    def _fsync_directory(self) -> None:
        """Make the rename itself durable, not just the file contents."""
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


register_sink("file", FileSinkConfig, FileSink)
