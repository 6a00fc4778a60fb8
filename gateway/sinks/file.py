"""File sink: appends line protocol to rotating local files.

The default when no sink is configured, so a fresh install keeps its data somewhere
readable (and replayable with ``curl --data-binary @file``) before anyone sets up a
database. Disk work runs in a worker thread so a slow SD card never stalls the loop.

Layout in ``directory``: ``current.lp`` takes appends; when the next batch would push it
past ``max_file_size`` it is renamed to ``lines-YYYYmmddTHHMMSS-<seq>.lp`` (UTC) and the
oldest rotated files beyond ``max_files`` are deleted. ``<seq>`` increases across restarts
and decides which file is oldest, so a clock that jumps backwards (boards without an RTC)
cannot make the gateway delete its newest data.

The rotated files are a ring, so a full disk gives up the oldest of them rather than new
readings: on ENOSPC/EDQUOT the oldest rotated file is deleted (logged at WARNING with its
name and size, and counted) and the append retried, while there are rotated files left.
``current.lp`` is never cut. Without this a sink on the buffer's own file system stopped
for good once it filled the disk (an outside probe): it retried forever, and the buffer
evicted every new reading to make room for the ones the sink could no longer deliver.

Files are created 0600 and a directory the sink creates 0700, whatever the umask
(:mod:`gateway.private`): the lines are the same readings the buffer protects.
"""

from __future__ import annotations

import asyncio
import errno
import logging
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
from gateway.problems import ProblemLog
from gateway.sinks import register_sink
from gateway.sinks.base import SinkConfigBase

log = logging.getLogger("iotgw.sinks.file")

CURRENT_NAME = "current.lp"
ROTATED = re.compile(r"^lines-\d{8}T\d{6}-(\d+)\.lp$")
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Write errors that deleting the oldest rotated file can cure."""
GIVE_UP_SUMMARY = 3600.0
"""Seconds between summary lines while the ring keeps giving up files (the first is
logged at once; the counts are on the sink either way)."""


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

    def directory_in(self, data_dir: Path) -> Path:
        """Relative to data_dir like the buffer, never to whatever the process's cwd is."""
        directory = self.directory or Path("lines")
        return directory if directory.is_absolute() else Path(data_dir) / directory

    def needs_openssl(self) -> bool:
        return False

    def setup_warnings(self, data_dir: Path) -> list[str]:
        """Settings that may not fit where they point: ``iotgw check`` prints these and
        the sink logs them at open. A warning, not an error: the disk may grow."""
        directory = self.directory_in(data_dir)
        ring = self.max_file_size * (self.max_files + 1)
        size = file_system_size(directory)
        if size is None or ring <= size:
            return []
        return [f"sink {self.sink_name!r}: max_file_size x (max_files + 1) = {ring} bytes is "
                f"more than the {size}-byte file system holding {directory}; when it fills, "
                "the oldest rotated files are deleted early"]


def file_system_size(directory: Path) -> int | None:
    """Total bytes of the file system that holds (or will hold) ``directory``: the nearest
    existing parent is asked, since the sink creates the directory itself."""
    for candidate in (directory, *directory.parents):
        try:
            st = os.statvfs(candidate)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        return st.f_blocks * st.f_frsize
    return None


class FileSink:
    """Appends each batch (plus a newline) to ``current.lp``; rotates by size.

    A batch is never split across files. A single batch bigger than ``max_file_size`` gets
    a file of its own rather than an error, because no amount of retrying could fit it.
    A failed append is truncated away so a retry after ENOSPC does not leave half a batch
    followed by the whole batch again.

    ``files_given_up``/``bytes_given_up`` count the rotated files deleted early to make
    room on a full disk (beyond what ``max_files`` deletes by design).
    """

    def __init__(self, config: FileSinkConfig, data_dir: Path) -> None:
        self.name = config.sink_name
        self.directory = config.directory_in(data_dir)
        self._data_dir = Path(data_dir)
        self._config = config
        self._current = self.directory / CURRENT_NAME
        self._size: int | None = None
        self._next_seq = 0
        self._lock = threading.Lock()  # a cancelled await does not stop its thread
        self._problems = ProblemLog(log)
        self.files_given_up = 0
        self.bytes_given_up = 0

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
        for warning in self._config.setup_warnings(self._data_dir):
            self._problems.report("ring-size", warning, level=logging.WARNING)
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
                self._append_making_room(data)
            except OSError:
                self._size = None  # re-read the disk state next time
                raise

    def _append_making_room(self, data: bytes) -> None:
        """Append; on a full disk give up the oldest rotated file and try again, until the
        batch fits or no rotated file is left (then the error goes to the forwarder,
        which retries and reports the sink as retrying, as for any full disk)."""
        while True:
            try:
                self._append(data)
                return
            except OSError as exc:
                if exc.errno not in DISK_FULL or not self._give_up_oldest(exc):
                    raise

    def _give_up_oldest(self, exc: OSError) -> bool:
        rotated = self.rotated_files()
        if not rotated:
            return False
        oldest = rotated[0]
        try:
            size = oldest.stat().st_size
        except FileNotFoundError:
            size = 0
        oldest.unlink(missing_ok=True)
        self.files_given_up += 1
        self.bytes_given_up += size
        self._problems.report(
            "disk-full", f"file sink {self.name!r}: {self.directory} is full "
            f"({exc.strerror}): deleted the oldest rotated file {oldest.name} ({size} bytes of "
            f"lines) to keep writing; {self.files_given_up} files, {self.bytes_given_up} bytes "
            "given up so far", level=logging.WARNING, kind="disk-full",
            summary_every=GIVE_UP_SUMMARY)
        return True

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
