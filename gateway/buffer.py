"""The durable on-disk buffer between the pipeline and the sinks: SQLite in WAL mode.

Why SQLite, WAL and ``synchronous=FULL``
    Every reading must reach the central store across power cuts, ``kill -9`` and long
    network outages. SQLite gives atomic, crash-safe transactions on one local file with no
    server to run. In WAL mode a commit appends to the ``-wal`` file (sequential writes, one
    fsync per commit) and readers never block the writer, so ``iotgw buffer stats`` can read
    a live buffer. With ``synchronous=FULL`` (the default) the WAL is fsynced at every
    commit: once :meth:`Buffer.append` returns, the readings survive a power cut.
    ``synchronous=NORMAL`` skips that fsync: still safe against process crashes and
    ``kill -9`` (the data is in the OS page cache), and the file never corrupts, but the last
    commits before a power cut or kernel panic may be lost.

Why chunks
    A row per reading costs a B-tree insert, an index entry and a delete per reading; at
    tens of thousands of readings per second that dominates. One row holds up to
    ``chunk_lines`` line-protocol lines joined by ``b"\\n"``, so appends, reads and prunes
    work on a few large rows and the payload is copied, not parsed. The cost is granularity:
    sinks read and acknowledge whole chunks, and ``max_bytes`` evicts whole chunks.
    A chunk's ``oldest_ns``/``newest_ns`` are the bounds of the :meth:`Buffer.append` call it
    came from.

Cursors: at-least-once delivery per sink
    Each sink has a cursor, the id of the last chunk it acknowledged. A forwarder reads the
    chunks after its cursor, writes them to its sink and only then acknowledges, which moves
    its cursor forward (never backwards). A crash between the write and the ack makes the
    sink get the same batch again after restart. That is harmless for InfluxDB: a point with
    the same measurement, tag set and timestamp overwrites the earlier one, so a resend does
    not duplicate data. Chunks every cursor has passed are deleted (pruned) in the same
    transaction as the ack. Chunk ids come from ``AUTOINCREMENT`` so they are never reused,
    even after the table was emptied, and a cursor can never point at a different chunk.

    A sink that appears in the configuration for the first time starts at the oldest chunk
    still buffered (its cursor is ``min(id) - 1``): it gets everything not yet pruned, not
    the history before. The cursor of a sink that is no longer configured is deleted when
    the sinks are registered (at start-up), so it stops holding data back. With no sink
    registered at all, nothing is pruned and ``max_bytes`` decides what is kept.

Checksums and quarantine
    SQLite checks its page structure, not the data in it: bitrot inside a payload (one
    digit changed, a run of bytes overwritten) passes ``quick_check`` and would be sent as a
    wrong reading. Each chunk's CRC-32 is written with it, in the same transaction, and
    checked whenever a chunk is read for a sink; a chunk that fails is moved to the
    ``quarantine`` table (payload as found, both checksums, when), logged once at ERROR
    with its id and line count and counted (``quarantined_*_total``); delivery goes on
    with the next chunk. The checksums live in a table of their own, ``chunk_crc``, not in
    a new column: the chunks table keeps the columns older gateways check exactly, so a
    buffer file stays usable after a rollback. Chunks written by an older gateway have no
    checksum and are read unchecked; checksums of chunks an older gateway deleted are
    dropped at open.

Totals
    Lines, chunks and payload bytes held, the lines ever committed, the lines dropped
    because the buffer was full and the newest reading time are kept in the ``meta`` table,
    updated in the same transaction as each change: statistics are cheap and survive
    restarts. Per-sink lag is a sum over a small covering index, never over the payloads.

Threading
    :class:`Buffer` is synchronous; commits wait for fsync. The gateway uses
    :class:`AsyncBuffer`, which runs every call on one dedicated worker thread so the event
    loop never blocks on the disk and calls are serialised in submission order.

Disk usage
    Payload bytes held are capped by ``max_bytes``; the file itself keeps its high-water
    size (SQLite reuses freed pages rather than shrinking the file), plus the WAL, whose
    size is capped after checkpoints by ``journal_size_limit``. The file system is guarded
    separately (:mod:`gateway.diskspace`): below ``min_free`` the buffer counts as full, and
    a reserve file is given back on ``SQLITE_FULL`` so acks and prunes can always run.

Start-up checks
    A zero-length ``buffer.db`` and a WAL that SQLite's recovery would cut short are
    reported at ERROR before SQLite opens them (:mod:`gateway.walcheck`); files are created
    0600 and directories 0700 (:mod:`gateway.private`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar

from gateway.diskspace import DiskGuard, is_read_only
from gateway.errors import BufferFailure
from gateway.private import make_dirs, open_private, tighten
from gateway.problems import ProblemLog
from gateway.walcheck import check_wal, copy_aside, inspect_wal, rebuild_from_wal

log = logging.getLogger("iotgw.buffer")

WhenFull = Literal["drop_oldest", "drop_newest"]
DropCause = Literal["max_bytes", "min_free", "disk_full"]
"""Why the buffer counted as full: its payload cap, the free-space floor, or SQLITE_FULL."""
Synchronous = Literal["full", "normal"]

SCHEMA_VERSION = 1
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
_BUSY_TIMEOUT_S = 10.0
_DROP_LOG_INTERVAL_S = 60.0
_DROP_CAUSES: dict[DropCause, str] = {
    "max_bytes": "the buffer is full (max_bytes: {buf.max_bytes} payload bytes held)",
    "min_free": "free space on {buf.disk.directory} is below min_free ({buf.disk.min_free} "
                "bytes)",
    "disk_full": "the file system of {buf.path} is full (SQLITE_FULL)",
}
# Primary result codes (extended codes carry them in the low byte) meaning "this file is
# damaged or is not a database". Anything else (locked, busy, cannot open, I/O error,
# read-only, disk full) is a problem of the system, not of the file: moving the file aside
# would not help and could hide a live database from its owner, so those raise instead.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_CORRUPTION_CODES = {_SQLITE_CORRUPT, _SQLITE_NOTADB}
# Transient conditions worth retrying on the same buffer (a read-only remount is undone by
# remounting; SQLite's connection works again once the file system is writable).
_SQLITE_FULL = 13
_SQLITE_IOERR_SHMSIZE = 10 | (19 << 8)
_RETRYABLE_CODES = {5, 6, 8, 10, _SQLITE_FULL}  # BUSY, LOCKED, READONLY, IOERR, FULL
_READ_ONLY_HINT_CODES = {8, 10, 14}  # READONLY, IOERR, CANTOPEN

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    n INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    oldest_ns INTEGER NOT NULL,
    newest_ns INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_summary ON chunks (id, n, nbytes, oldest_ns);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    acked_id INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunk_crc (
    id INTEGER PRIMARY KEY,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    oldest_ns INTEGER NOT NULL,
    newest_ns INTEGER NOT NULL,
    crc_stored INTEGER NOT NULL,
    crc_found INTEGER NOT NULL,
    found_ns INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""
_CHUNK_COLUMNS = ["id", "n", "nbytes", "oldest_ns", "newest_ns", "payload"]
_COUNTERS = (
    "lines_held",
    "chunks_held",
    "bytes_held",
    "committed_total",
    "dropped_full_total",
    "quarantined_chunks_total",
    "quarantined_lines_total",
)


class AppendResult(NamedTuple):
    """What one :meth:`Buffer.append` did.

    ``stored`` new lines are committed; ``dropped`` lines were lost by this call because the
    buffer was full: refused new lines (``drop_newest``) or evicted buffered lines
    (``drop_oldest``; if a single call holds more than ``max_bytes``, its own oldest lines).
    """

    stored: int
    dropped: int


@dataclass(frozen=True, slots=True)
class Batch:
    """Whole chunks for one sink, in order: ``payload`` is ``lines`` lines joined by ``\\n``.

    Acknowledge it with ``ack(sink, batch.last_id)`` once the sink has stored it.
    """

    last_id: int
    lines: int
    payload: bytes
    oldest_ns: int
    newest_ns: int


@dataclass(frozen=True, slots=True)
class SinkLag:
    """How far one sink is behind: lines and chunks after its cursor."""

    name: str
    acked_id: int
    lag_lines: int
    lag_chunks: int
    oldest_pending_ns: int | None


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot of the buffer. Times are nanoseconds since the epoch, ``None`` if none."""

    path: Path
    depth_lines: int
    depth_chunks: int
    bytes_held: int
    file_bytes: int
    max_bytes: int | None
    when_full: str | None
    oldest_time_ns: int | None
    newest_time_ns: int | None
    committed_total: int
    dropped_full_total: int
    quarantined_chunks_total: int = 0
    quarantined_lines_total: int = 0
    sinks: dict[str, SinkLag] = field(default_factory=dict)


class _Appended(NamedTuple):
    counters: dict[str, int]
    stored: int
    dropped: int
    newest_time: int | None
    cause: DropCause = "max_bytes"
    """Why lines were dropped, if any were."""


def _space_cause(low: bool, disk_full: bool) -> DropCause | None:
    """Why an append is short of disk space: SQLITE_FULL came back, or free space was
    below ``min_free`` before it started; ``None`` when it is not."""
    if disk_full:
        return "disk_full"
    return "min_free" if low else None


class _Damaged(NamedTuple):
    """A chunk whose payload no longer matches the CRC-32 written with it."""

    chunk_id: int
    stored: int
    found: int


class _Span(NamedTuple):
    """The chunks one read takes: up to ``last_id``, their lines and time bounds."""

    last_id: int
    lines: int
    oldest_ns: int
    newest_ns: int


def _select_chunks(conn: sqlite3.Connection, acked_id: int, max_lines: int) -> _Span | None:
    """Whole chunks after ``acked_id`` that fit in ``max_lines`` (at least one), from the
    covering index (no payload read); ``None`` if there are none."""
    span: _Span | None = None
    cursor = conn.execute(
        "SELECT id, n, oldest_ns, newest_ns FROM chunks WHERE id > ? ORDER BY id", (acked_id,)
    )
    try:
        for chunk_id, n, oldest, newest in cursor:
            if span is None:
                span = _Span(chunk_id, n, oldest, newest)
            elif span.lines + n > max_lines:
                break
            else:
                span = _Span(chunk_id, span.lines + n, min(span.oldest_ns, oldest),
                             max(span.newest_ns, newest))
            if span.lines >= max_lines:
                break
    finally:
        cursor.close()
    return span


class _Corrupt(Exception):
    """Internal: the file is damaged or is not an iotgw buffer."""


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        # Only DatabaseError proper (not its Operational/Integrity/... subclasses) is what
        # the sqlite3 module raises for "file is not a database"/"malformed" without a code.
        return type(exc) is sqlite3.DatabaseError
    return (code & 0xFF) in _CORRUPTION_CODES


def _failure(exc: sqlite3.Error, doing: str, path: Path) -> BufferFailure:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    message = f"buffer {path}: {doing} failed: {exc} ({name})"
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in _READ_ONLY_HINT_CODES and is_read_only(path.parent):
        message += f"; {path.parent} is on a file system mounted read-only" + _READ_ONLY_ADVICE
    failure = BufferFailure(message)
    if primary in _RETRYABLE_CODES:
        failure.retryable = True
    return failure


_READ_ONLY_ADVICE = (
    " (the kernel does this after I/O errors on a failing SD card: check dmesg, then remount"
    " it read-write or move buffer.path)"
)


def _is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL, or the ``-shm`` file could not be sized (how a full disk shows at open)."""
    code = getattr(exc.__cause__, "sqlite_errorcode", None)
    return code is not None and ((code & 0xFF) == _SQLITE_FULL or code == _SQLITE_IOERR_SHMSIZE)


def _looks_like_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _file_bytes(path: Path) -> int:
    total = 0
    for candidate in (path, Path(f"{path}-wal")):
        try:
            total += candidate.stat().st_size
        except OSError:
            pass
    return total


def _fitting_prefix(lines: Sequence[bytes], room: int) -> int:
    """How many leading lines fit in ``room`` bytes once joined by newlines."""
    used = -1
    for count, line in enumerate(lines):
        used += len(line) + 1
        if used > room:
            return count
    return len(lines)


def _fitting_suffix(lines: Sequence[bytes], room: int) -> int:
    """How many trailing lines fit in ``room`` bytes once joined by newlines."""
    used = -1
    for count, line in enumerate(reversed(lines)):
        used += len(line) + 1
        if used > room:
            return count
    return len(lines)


def _delete_chunks(conn: sqlite3.Connection, upto: int) -> None:
    """Delete the chunks up to id ``upto`` with their checksums."""
    conn.execute("DELETE FROM chunks WHERE id <= ?", (upto,))
    conn.execute("DELETE FROM chunk_crc WHERE id <= ?", (upto,))


def _read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def _query_stats(conn: sqlite3.Connection, path: Path) -> BufferStats:
    """Statistics from the meta table and the covering index, in one read transaction."""
    conn.execute("BEGIN")
    try:
        meta = _read_meta(conn)
        oldest = conn.execute("SELECT min(oldest_ns) FROM chunks").fetchone()[0]
        sinks: dict[str, SinkLag] = {}
        for name, acked_id in conn.execute("SELECT name, acked_id FROM cursors ORDER BY name"):
            chunks, lines, pending = conn.execute(
                "SELECT count(*), coalesce(sum(n), 0), min(oldest_ns) FROM chunks WHERE id > ?",
                (acked_id,),
            ).fetchone()
            sinks[name] = SinkLag(name, acked_id, lines, chunks, pending)
    finally:
        conn.execute("COMMIT")

    def counter(key: str) -> int:
        value = meta.get(key)
        return int(value) if isinstance(value, int) else 0

    max_bytes = meta.get("max_bytes")
    when_full = meta.get("when_full")
    newest = meta.get("newest_time_ns")
    return BufferStats(
        path=path,
        depth_lines=counter("lines_held"),
        depth_chunks=counter("chunks_held"),
        bytes_held=counter("bytes_held"),
        file_bytes=_file_bytes(path),
        max_bytes=max_bytes if isinstance(max_bytes, int) else None,
        when_full=when_full if isinstance(when_full, str) else None,
        oldest_time_ns=oldest,
        newest_time_ns=newest if isinstance(newest, int) else None,
        committed_total=counter("committed_total"),
        dropped_full_total=counter("dropped_full_total"),
        quarantined_chunks_total=counter("quarantined_chunks_total"),
        quarantined_lines_total=counter("quarantined_lines_total"),
        sinks=sinks,
    )


class Buffer:
    """A durable FIFO of line-protocol chunks with one cursor per sink.

    Synchronous and guarded by a lock; the gateway drives it through :class:`AsyncBuffer`.
    Every method that changes something is one SQLite transaction: it happens completely
    or, after a crash, not at all.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        when_full: WhenFull,
        synchronous: Synchronous = "full",
        chunk_lines: int = 2000,
        min_free: int | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be drop_oldest or drop_newest, got {when_full!r}")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be full or normal, got {synchronous!r}")
        if chunk_lines < 1:
            raise ValueError(f"chunk_lines must be at least 1, got {chunk_lines}")
        if min_free is not None and min_free < 0:
            raise ValueError(f"min_free must not be negative, got {min_free}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.when_full: WhenFull = when_full
        self.synchronous: Synchronous = synchronous
        self.chunk_lines = chunk_lines
        self.recovered_from_corruption: Path | None = None
        """Where :meth:`open` moved a corrupt file to, or ``None`` if it did not."""
        self._conn: sqlite3.Connection | None = None
        self._meta: dict[str, int] = {}
        self._newest_time_ns: int | None = None
        self._lock = threading.RLock()
        self._dropped_logged_at = -_DROP_LOG_INTERVAL_S
        self._dropped_unlogged: dict[DropCause, int] = {}
        self.disk = DiskGuard(self.path, min_free)
        """Free-space floor (``min_free``; default: 64 MiB, at most 5% of the file system)
        and the reserve file released on ``SQLITE_FULL`` (see :mod:`gateway.diskspace`)."""
        self._problems = ProblemLog(log)
        self._page_size = 4096

    # -- opening -------------------------------------------------------------------------

    def open(self) -> Path | None:
        """Open (creating if needed) the buffer; move a corrupt file aside instead of failing.

        A file that is not a database, fails ``PRAGMA quick_check`` or holds foreign tables
        is renamed, with its ``-wal``/``-shm``, to ``<name>.corrupt-<UTC timestamp>``; an
        ERROR is logged naming it, and a fresh, empty buffer is started: a gateway that
        crash-looped on a damaged SD card would lose every new reading instead. The moved
        file is kept for forensics/recovery (``sqlite3 FILE .recover``).

        The check runs on a read-only connection first, because closing a read-write
        connection checkpoints and deletes the ``-wal``: the files are moved exactly as
        found. ``quick_check`` reads the whole file, so start-up time grows with the backlog.

        Returns the path the corrupt file was moved to (also kept in
        ``recovered_from_corruption``) or ``None``. Raises :class:`BufferFailure` for
        problems that moving the file cannot fix (permissions, locked by another process,
        I/O errors, a schema written by a newer gateway).
        """
        with self._lock:
            if self._conn is not None:
                return self.recovered_from_corruption
            try:
                make_dirs(self.path.parent)
            except OSError as exc:
                hint = " on a file system mounted read-only" + _READ_ONLY_ADVICE if (
                    exc.errno == errno.EROFS) else ""
                raise BufferFailure(
                    f"buffer {self.path}: cannot create its directory: {exc}{hint}"
                ) from exc
            if is_read_only(self.path.parent):
                raise BufferFailure(
                    f"buffer {self.path}: {self.path.parent} is on a file system mounted "
                    "read-only; readings cannot be kept" + _READ_ONLY_ADVICE
                )
            self._check_leftovers()
            try:
                for suffix in ("", "-wal", "-shm"):
                    if tighten(Path(f"{self.path}{suffix}")):
                        log.info("buffer %s%s: permissions tightened to owner only",
                                 self.path, suffix)
                self._create_if_missing()
            except OSError as exc:
                raise BufferFailure(f"buffer {self.path}: cannot create it: {exc}") from exc
            try:
                checked = self._probe()
                conn = self._connect_releasing_reserve(quick_check=not checked)
            except _Corrupt as exc:
                self.recovered_from_corruption = self._move_aside(str(exc))
                try:
                    conn = self._connect(quick_check=False)
                except _Corrupt as again:
                    raise BufferFailure(
                        f"buffer {self.path}: a fresh file is unusable too: {again}"
                    ) from again
            self._conn = conn
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            self.disk.start()
            if self.disk.reserve_bytes:
                # The WAL's pages must fit into the reserve, so that on SQLITE_FULL the
                # checkpoint that empties it can always complete once the reserve is gone.
                pages = max(16, self.disk.reserve_bytes // (2 * self._page_size))
                conn.execute(f"PRAGMA wal_autocheckpoint={min(pages, 1000)}")
            log.info(
                "buffer %s open: %d lines in %d chunks, %d payload bytes held (max %d, %s, "
                "synchronous=%s, min_free %d)",
                self.path, self._meta["lines_held"], self._meta["chunks_held"],
                self._meta["bytes_held"], self.max_bytes, self.when_full, self.synchronous,
                self.disk.min_free,
            )
            return self.recovered_from_corruption

    def _connect_releasing_reserve(self, quick_check: bool) -> sqlite3.Connection:
        """Open; on a full disk, give back the reserve once so a restart is never stuck."""
        try:
            return self._connect(quick_check=quick_check)
        except BufferFailure as exc:
            if not _is_disk_full(exc) or not self.disk.release_reserve():
                raise
            log.error("buffer %s: the disk is full at start (%s); released the space reserve",
                      self.path, exc)
            return self._connect(quick_check=quick_check)

    def _create_if_missing(self) -> None:
        """Create a new buffer as an initialised 0600 file under a temporary name, then
        rename it into place: a zero-length ``buffer.db`` is then never our own doing (see
        :meth:`_check_leftovers`), and SQLite gives ``-wal``/``-shm`` the mode of the
        database file."""
        if self.path.exists():
            return
        fresh = self.path.with_name(f"{self.path.name}.new")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{fresh}{suffix}").unlink(missing_ok=True)
        os.close(open_private(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        try:
            conn = sqlite3.connect(str(fresh), isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            fresh.unlink(missing_ok=True)
            raise _failure(exc, "creating", self.path) from exc
        os.replace(fresh, self.path)
        _fsync_dir(self.path.parent)

    def _check_leftovers(self) -> None:
        """Say what a crash or a damaged card cost before SQLite silently discards it.

        A zero-length ``buffer.db`` would open as a valid empty database; the gateway never
        leaves one (see :meth:`_create_if_missing`), so it is moved aside as lost. A damaged
        WAL is reported with its counts and copied aside (:func:`check_wal`).
        """
        wal = Path(f"{self.path}-wal")
        try:
            size = self.path.stat().st_size if self.path.is_file() else None
        except OSError:
            return
        if size == 0:
            if self._rebuild_from_wal(wal):
                return
            try:
                report = inspect_wal(wal)
            except OSError:
                report = None
            left = [
                f"{p.name} ({p.stat().st_size} bytes)"
                for p in (wal, Path(f"{self.path}-shm"), self.disk.reserve_path)
                if p.exists()
            ]
            since = (
                f"a previous run left {', '.join(left)}" if left
                else "no other file of a previous run is left"
            )
            commits = "" if report is None or not report.header_ok else (
                f"; its WAL holds {report.valid_commits} commits, not enough to rebuild it"
            )
            self.recovered_from_corruption = self._move_aside(
                f"the file is EMPTY (0 bytes; {since}){commits}: every reading it held is lost"
            )
            return
        if size is not None and _looks_like_sqlite(self.path):
            # (Not a database at all: open() moves it aside together with its WAL.)
            check_wal(wal, size)

    def _rebuild_from_wal(self, wal: Path) -> bool:
        """An empty ``buffer.db`` whose WAL holds every page of its last commit is rebuilt
        from it (the readings are kept); the WAL is kept aside as it was."""
        try:
            rebuilt = rebuild_from_wal(wal)
        except OSError:
            return False
        if rebuilt is None:
            return False
        image, commits = rebuilt
        kept = copy_aside(wal)
        fresh = self.path.with_name(self.path.name + ".rebuilt")
        fd = open_private(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, image)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, self.path)
        for leftover in (wal, Path(f"{self.path}-shm")):
            leftover.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        log.error(
            "BUFFER FILE %s WAS EMPTY (0 bytes) after a crash or a damaged card; rebuilt from "
            "its WAL, which held every page of its last commit: the %d commits in it are "
            "kept. The WAL as found was %s", self.path, commits, kept)
        return True

    def _probe(self) -> bool:
        """Check an existing file read-only; True if it was checked and is fine.

        Raises ``_Corrupt``. Returns False when there is no file, or when the read-only
        check could not run for another reason (the read-write open then checks instead).
        """
        try:
            if not self.path.is_file() or self.path.stat().st_size == 0:
                return False
        except OSError:
            return False
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
            )
        except sqlite3.Error:
            return False
        try:
            self._check(conn, quick_check=True)
            return True
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                raise _Corrupt(f"{exc} ({getattr(exc, 'sqlite_errorname', '?')})") from exc
            log.debug("buffer %s: read-only check not possible: %s", self.path, exc)
            return False
        finally:
            conn.close()

    def _connect(self, quick_check: bool) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BufferFailure(f"buffer {self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT}")
            # Debian builds SQLite with SECURE_DELETE: every pruned page would be zeroed
            # through the WAL, doubling the writes and needing as much free space to prune
            # as was pruned (on a full disk: none). FAST zeroes only where it costs no I/O.
            conn.execute("PRAGMA secure_delete=FAST")
            self._check(conn, quick_check=quick_check)
            self._init_schema(conn)
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if _is_corruption(exc):
                raise _Corrupt(f"{exc} ({getattr(exc, 'sqlite_errorname', '?')})") from exc
            raise _failure(exc, "opening", self.path) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    def _check(self, conn: sqlite3.Connection, quick_check: bool) -> None:
        """Raise ``_Corrupt`` unless ``conn`` is a sound iotgw buffer (or an empty file)."""
        if quick_check:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(10)")]
            if problems != ["ok"]:
                raise _Corrupt("quick_check: " + "; ".join(problems))
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if tables and "chunks" not in tables:
            raise _Corrupt(f"not an iotgw buffer (tables: {', '.join(sorted(tables))})")
        if "chunks" in tables:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(chunks)")]
            if columns != _CHUNK_COLUMNS:
                raise _Corrupt(f"not an iotgw buffer (chunks columns: {', '.join(columns)})")
        if "meta" in tables:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if version is not None and isinstance(version[0], int) and version[0] > SCHEMA_VERSION:
                # Written by a newer gateway: keep it untouched rather than guess.
                raise BufferFailure(
                    f"buffer {self.path} has schema {version[0]}, this gateway knows "
                    f"{SCHEMA_VERSION}: upgrade the gateway or move the file away"
                )

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Not executescript(): it would COMMIT first and this must be one transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )
            conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)",
                [(key,) for key in _COUNTERS],
            )
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('newest_time_ns', NULL)")
            # Checksums of chunks an older gateway deleted (it knows no chunk_crc table).
            conn.execute("DELETE FROM chunk_crc WHERE id NOT IN (SELECT id FROM chunks)")
            # Written only when changed: an unchanged start writes nothing, so it works on a
            # full disk too.
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value WHERE value IS NOT excluded.value",
                [("max_bytes", self.max_bytes), ("when_full", self.when_full)],
            )
            meta = _read_meta(conn)
            counters = {key: int(meta.get(key) or 0) for key in _COUNTERS}
            # The held totals must match the rows; repair them if they do not (cheap: the
            # covering index, not the payloads), so a past bug cannot skew max_bytes forever.
            chunks, lines, nbytes = conn.execute(
                "SELECT count(*), coalesce(sum(n), 0), coalesce(sum(nbytes), 0) FROM chunks"
            ).fetchone()
            actual = {"chunks_held": chunks, "lines_held": lines, "bytes_held": nbytes}
            if any(counters[key] != value for key, value in actual.items()):
                log.warning(
                    "buffer %s: held totals %s did not match the rows %s; repaired",
                    self.path, {k: counters[k] for k in actual}, actual,
                )
                counters.update(actual)
                self._write_meta(conn, counters)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._meta = counters
        newest = meta.get("newest_time_ns")
        self._newest_time_ns = newest if isinstance(newest, int) else None

    def _move_aside(self, reason: str) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        serial = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}.{serial}")
            serial += 1
        try:
            # The WAL first: a stale WAL left next to a fresh database must never be
            # replayed into it. If we die half-way, the damaged file is still in place and
            # is detected (and moved) again at the next start.
            for suffix in ("-wal", "-shm", ""):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, f"{target}{suffix}")
            _fsync_dir(self.path.parent)
        except OSError as exc:
            raise BufferFailure(
                f"buffer {self.path} is corrupt ({reason}) and could not be moved aside: {exc}"
            ) from exc
        log.error(
            "BUFFER FILE %s IS CORRUPT (%s). It was moved aside to %s and an EMPTY buffer "
            "was started. Readings still in the old file are NOT forwarded; inspect or "
            "salvage them with 'sqlite3 %s .recover'.",
            self.path, reason, target, target,
        )
        return target

    # -- transactions --------------------------------------------------------------------

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BufferFailure(f"buffer {self.path} is not open")
        return self._conn

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        conn = self._require_open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("buffer %s: rollback failed", self.path)
                raise
        except sqlite3.Error as exc:
            raise _failure(exc, doing, self.path) from exc

    def _write(self, doing: str, body: Callable[[sqlite3.Connection, bool], _T]) -> _T:
        """Run ``body(conn, short_of_space)`` as one write transaction.

        On ``SQLITE_FULL`` the reserve file is given back, the WAL is checkpointed and
        truncated (its space is what SQLite needs next), and the transaction runs once more
        with ``short_of_space`` True (an append then applies ``when_full`` within the space
        it already holds). The first failure is logged at ERROR, recovery at INFO.

        While short of space every commit is followed by a checkpoint: the WAL then wraps
        around at its start instead of growing to the ``wal_autocheckpoint`` size.
        """
        try:
            with self._transaction(doing) as conn:
                result = body(conn, False)
        except BufferFailure as exc:
            if not _is_disk_full(exc):
                raise
            released = self.disk.release_reserve()
            self._problems.report(
                "disk_full",
                f"buffer {self.path}: the disk is full (SQLITE_FULL); "
                + ("released the space reserve; " if released else "")
                + f"applying when_full ({self.when_full}) and keeping unrecorded acks in "
                "memory until space returns",
            )
            self._checkpoint("TRUNCATE")
            with self._transaction(doing) as conn:
                result = body(conn, True)
            self.disk.low = True
        if self.disk.low:
            self._checkpoint("PASSIVE")
        self._problems.recovered("disk_full", f"buffer {self.path}: writes succeed again")
        return result

    def _checkpoint(self, mode: Literal["PASSIVE", "TRUNCATE"]) -> None:
        """Best effort: copy the WAL into the database so the WAL can restart or shrink."""
        try:
            self._require_open().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            log.debug("buffer %s: checkpoint (%s) failed: %s", self.path, mode, exc)

    def _short_of_space(self, conn: sqlite3.Connection) -> bool:
        """Free space plus the pages free inside the file is below ``min_free``."""
        try:
            free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        except sqlite3.Error:
            free_pages = 0
        was_low = self.disk.low
        low = self.disk.check(free_pages * self._page_size)
        if low and not was_low:
            self._problems.report(
                "min_free",
                f"buffer {self.path}: free space on {self.disk.directory} is below min_free "
                f"({self.disk.min_free} bytes); the buffer counts as full and applies "
                f"when_full ({self.when_full}) until space returns",
            )
        elif was_low and not low:
            self._problems.recovered(
                "min_free",
                f"buffer {self.path}: free space (with pages free inside the buffer file) is "
                "above min_free again",
            )
        return low

    @staticmethod
    def _write_meta(conn: sqlite3.Connection, counters: dict[str, int]) -> None:
        conn.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(value, key) for key, value in counters.items()],
        )

    @staticmethod
    def _last_id(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'chunks'").fetchone()
        return int(row[0]) if row else 0

    # -- writing -------------------------------------------------------------------------

    def append(self, lines: Sequence[bytes], oldest_ns: int, newest_ns: int) -> AppendResult:
        """Commit ``lines`` (one reading each, no newlines) in one transaction.

        They are split into chunks of at most ``chunk_lines`` lines. When the payload bytes
        held would exceed ``max_bytes``: ``drop_oldest`` evicts the oldest chunks, whether
        or not every sink has taken them, until the new chunk fits; ``drop_newest`` keeps
        the lines that still fit and refuses the rest of this call. Either way the lost
        lines are counted in ``dropped`` and in ``dropped_full_total``.

        Short of disk space (``min_free``, or ``SQLITE_FULL``) the buffer counts as full
        too (see :meth:`_append_rows`). A call too large to commit at once on a full disk
        (a backlog flushed after an outage) is committed one chunk per transaction, and
        what still does not fit is dropped and counted: otherwise the same large batch
        would be retried forever and nothing new could be stored.
        """
        total = len(lines)
        if total == 0:
            return AppendResult(0, 0)
        with self._lock:
            low = self._short_of_space(self._require_open())

            def body(conn: sqlite3.Connection, short: bool) -> _Appended:
                return self._append_rows(conn, lines, oldest_ns, newest_ns,
                                         _space_cause(low, short))

            try:
                done = self._write("append", body)
            except BufferFailure as exc:
                if not _is_disk_full(exc) or total <= self.chunk_lines:
                    raise
                done = self._append_piecewise(lines, oldest_ns, newest_ns)
            # Only after COMMIT: a failed transaction leaves the in-memory totals as they were.
            self._meta = done.counters
            self._newest_time_ns = done.newest_time
        if done.dropped:
            self._log_dropped(done.dropped, done.cause)
        return AppendResult(done.stored, done.dropped)

    def commit_with(self, doing: str, lines: Sequence[bytes], oldest_ns: int, newest_ns: int,
                    body: Callable[[sqlite3.Connection], _T]) -> tuple[AppendResult, _T]:
        """Append ``lines`` and run ``body`` (more writes, e.g. the alarm journal) in ONE
        transaction: after a crash both are there or neither is.

        Unlike :meth:`append` there is no piecewise fallback on a full disk: the caller's
        rows must not be split from their lines, so the error propagates and the caller
        retries. ``when_full`` still applies to the lines."""
        with self._lock:
            low = self._short_of_space(self._require_open()) if lines else False

            def work(conn: sqlite3.Connection, short: bool) -> tuple[_Appended | None, _T]:
                done = (self._append_rows(conn, lines, oldest_ns, newest_ns,
                                          _space_cause(low, short)) if lines else None)
                return done, body(conn)

            done, result = self._write(doing, work)
            if done is not None:
                self._meta = done.counters
                self._newest_time_ns = done.newest_time
        if done is None:
            return AppendResult(0, 0), result
        if done.dropped:
            self._log_dropped(done.dropped, done.cause)
        return AppendResult(done.stored, done.dropped), result

    def query(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``body`` (reads) on the buffer's connection, in one read transaction."""
        with self._lock:
            conn = self._require_open()
            try:
                conn.execute("BEGIN")
                try:
                    return body(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _failure(exc, "query", self.path) from exc

    def _append_piecewise(
        self, lines: Sequence[bytes], oldest_ns: int, newest_ns: int
    ) -> _Appended:
        """One chunk per transaction, short of space; the rest is dropped at the first
        chunk that does not fit either (its lines counted, never silently lost)."""
        stored = dropped = 0
        for start in range(0, len(lines), self.chunk_lines):
            part = lines[start : start + self.chunk_lines]
            try:
                with self._transaction("append") as conn:
                    piece = self._append_rows(conn, part, oldest_ns, newest_ns, "disk_full")
            except BufferFailure as exc:
                if not _is_disk_full(exc):
                    raise
                rest = len(lines) - start
                dropped += rest
                counters = dict(self._meta)
                counters["dropped_full_total"] += rest
                try:
                    with self._transaction("counting dropped lines") as conn:
                        self._write_meta(conn, counters)
                    self._meta = counters
                except BufferFailure:
                    pass  # the drop is still reported to the caller and logged
                break
            self._meta = piece.counters
            self._newest_time_ns = piece.newest_time
            stored += piece.stored
            dropped += piece.dropped
            self._checkpoint("PASSIVE")
        return _Appended(dict(self._meta), stored, dropped, self._newest_time_ns, "disk_full")

    def _append_rows(
        self,
        conn: sqlite3.Connection,
        lines: Sequence[bytes],
        oldest_ns: int,
        newest_ns: int,
        short_of_space: DropCause | None,
    ) -> _Appended:
        """The body of :meth:`append`. Short of disk space, the file may not grow: the
        limit is what is held now plus the pages free inside the file, so ``drop_oldest``
        replaces old chunks (SQLite reuses their pages) and ``drop_newest`` refuses what
        does not fit in the free pages. ``short_of_space`` says why space is short
        (``min_free`` or ``disk_full``); the cause of any drop is returned with it."""
        total = len(lines)
        counters = dict(self._meta)
        limit = self.max_bytes
        cause: DropCause = "max_bytes"
        if short_of_space is not None:
            free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            room = counters["bytes_held"] + free_pages * self._page_size
            if room < limit:
                limit, cause = room, short_of_space
        stored = dropped = 0
        first_new_id: int | None = None
        for start in range(0, total, self.chunk_lines):
            part = lines[start : start + self.chunk_lines]
            payload = b"\n".join(part)
            size = len(payload)
            if counters["bytes_held"] + size > limit:
                if self.when_full == "drop_newest":
                    room = limit - counters["bytes_held"]
                    keep = _fitting_prefix(part, room) if room > 0 else 0
                    dropped += total - start - keep
                    if keep:
                        part = part[:keep]
                        payload = b"\n".join(part)
                        first_new_id = self._insert(
                            conn, counters, part, payload, oldest_ns, newest_ns,
                            first_new_id,
                        )
                        stored += keep
                    break
                evicted, evicted_new = self._evict(conn, counters, size, first_new_id, limit)
                dropped += evicted
                stored -= evicted_new
                if size > limit:
                    # More than the whole buffer in one chunk: keep its newest lines.
                    keep = _fitting_suffix(part, limit)
                    dropped += len(part) - keep
                    if not keep:
                        continue
                    part = part[len(part) - keep :]
                    payload = b"\n".join(part)
            first_new_id = self._insert(
                conn, counters, part, payload, oldest_ns, newest_ns, first_new_id
            )
            stored += len(part)
        counters["committed_total"] += stored
        counters["dropped_full_total"] += dropped
        newest_time = self._newest_time_ns
        if stored and (newest_time is None or newest_ns > newest_time):
            newest_time = newest_ns
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'newest_time_ns'", (newest_time,)
            )
        self._write_meta(conn, counters)
        return _Appended(counters, stored, dropped, newest_time, cause)

    def _log_dropped(self, dropped: int, cause: DropCause) -> None:
        """Warn about dropped lines at most once a minute (a full buffer drops on every
        commit, several per second), naming each cause with its count."""
        self._dropped_unlogged[cause] = self._dropped_unlogged.get(cause, 0) + dropped
        now = time.monotonic()
        if now - self._dropped_logged_at < _DROP_LOG_INTERVAL_S:
            return
        reasons = "; ".join(
            f"{count} because {_DROP_CAUSES[why].format(buf=self)}"
            for why, count in self._dropped_unlogged.items()
        )
        log.warning("buffer %s dropped %d lines since the last warning (when_full: %s): %s",
                    self.path, sum(self._dropped_unlogged.values()), self.when_full, reasons)
        self._dropped_logged_at = now
        self._dropped_unlogged = {}

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        counters: dict[str, int],
        part: Sequence[bytes],
        payload: bytes,
        oldest_ns: int,
        newest_ns: int,
        first_new_id: int | None,
    ) -> int | None:
        cursor = conn.execute(
            "INSERT INTO chunks (n, nbytes, oldest_ns, newest_ns, payload) VALUES (?, ?, ?, ?, ?)",
            (len(part), len(payload), oldest_ns, newest_ns, payload),
        )
        conn.execute("INSERT INTO chunk_crc (id, crc) VALUES (?, ?)",
                     (cursor.lastrowid, zlib.crc32(payload)))
        counters["lines_held"] += len(part)
        counters["chunks_held"] += 1
        counters["bytes_held"] += len(payload)
        return cursor.lastrowid if first_new_id is None else first_new_id

    def _evict(
        self,
        conn: sqlite3.Connection,
        counters: dict[str, int],
        incoming: int,
        first_new_id: int | None,
        limit: int,
    ) -> tuple[int, int]:
        """Delete oldest chunks until ``incoming`` bytes fit; (lines evicted, of them new)."""
        evicted = evicted_new = 0
        while counters["bytes_held"] + incoming > limit and counters["chunks_held"]:
            rows = conn.execute("SELECT id, n, nbytes FROM chunks ORDER BY id LIMIT 256").fetchall()
            if not rows:
                break
            upto = rows[0][0]
            for chunk_id, n, nbytes in rows:
                upto = chunk_id
                counters["lines_held"] -= n
                counters["chunks_held"] -= 1
                counters["bytes_held"] -= nbytes
                evicted += n
                if first_new_id is not None and chunk_id >= first_new_id:
                    evicted_new += n
                if counters["bytes_held"] + incoming <= limit:
                    break
            _delete_chunks(conn, upto)
        return evicted, evicted_new

    def _prune(self, conn: sqlite3.Connection, counters: dict[str, int]) -> int:
        """Delete the chunks every cursor has passed; returns the lines deleted."""
        floor = conn.execute("SELECT min(acked_id) FROM cursors").fetchone()[0]
        if floor is None:
            return 0
        chunks: int
        lines: int
        nbytes: int
        chunks, lines, nbytes = conn.execute(
            "SELECT count(*), coalesce(sum(n), 0), coalesce(sum(nbytes), 0) "
            "FROM chunks WHERE id <= ?",
            (floor,),
        ).fetchone()
        if chunks:
            _delete_chunks(conn, floor)
            counters["chunks_held"] -= chunks
            counters["lines_held"] -= lines
            counters["bytes_held"] -= nbytes
            self._write_meta(conn, counters)
        return lines

    # -- cursors -------------------------------------------------------------------------

    def register_sinks(self, names: Iterable[str]) -> None:
        """Make the set of cursors exactly ``names``.

        A new sink starts at the oldest chunk still buffered (``acked_id = min(id) - 1``, or
        the last id ever used when the buffer is empty). Cursors of sinks not in ``names``
        are deleted and whatever only they were holding back is pruned.
        """
        wanted = set(names)
        for name in wanted:
            if not isinstance(name, str) or not name:
                raise ValueError(f"sink names must be non-empty strings, got {name!r}")
        with self._lock:
            counters, pruned = self._write(
                "registering sinks", lambda conn, _short: self._register(conn, wanted)
            )
        self._meta = counters
        if pruned:
            log.info("buffer: pruned %d lines no remaining sink needs", pruned)

    def _register(self, conn: sqlite3.Connection, wanted: set[str]) -> tuple[dict[str, int], int]:
        """The body of :meth:`register_sinks`; (new totals, lines pruned)."""
        counters = dict(self._meta)
        existing = dict(conn.execute("SELECT name, acked_id FROM cursors").fetchall())
        for gone in sorted(existing.keys() - wanted):
            conn.execute("DELETE FROM cursors WHERE name = ?", (gone,))
            log.info("buffer: removed the cursor of sink %r, no longer configured", gone)
        new = sorted(wanted - existing.keys())
        if new:
            oldest = conn.execute("SELECT min(id) FROM chunks").fetchone()[0]
            start = oldest - 1 if oldest is not None else self._last_id(conn)
            conn.executemany(
                "INSERT INTO cursors (name, acked_id) VALUES (?, ?)",
                [(name, start) for name in new],
            )
            for name in new:
                log.info(
                    "buffer: new sink %r starts at the oldest buffered chunk (%d lines)",
                    name, counters["lines_held"],
                )
        pruned = self._prune(conn, counters)
        return counters, pruned

    def read(self, sink: str, max_lines: int, after: int | None = None) -> Batch | None:
        """The next chunks after ``sink``'s cursor, or ``None`` if it is up to date.

        ``after`` reads past chunk ids a forwarder delivered but could not acknowledge yet
        (the disk was full): its position is then kept in memory until :meth:`ack` works.

        Whole chunks in id order, as many as fit in ``max_lines``; always at least one, so
        a chunk larger than ``max_lines`` still comes out (the forwarder splits it if the
        sink refuses it as too large). Reading does not move the cursor: until
        :meth:`ack`, the same batch is returned again.

        Every chunk's payload is checked against the CRC-32 written with it: a chunk that
        changed on disk (bitrot that SQLite's page structure does not notice) is never
        returned but quarantined (:meth:`_quarantine`), and the read goes on without it.
        """
        if max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, got {max_lines}")
        with self._lock:
            while True:
                batch, damaged = self._read_checked(sink, max_lines, after)
                if not damaged:
                    return batch
                self._quarantine(damaged)

    def _read_checked(self, sink: str, max_lines: int, after: int | None
                      ) -> tuple[Batch | None, list[_Damaged]]:
        """One attempt of :meth:`read`: the batch, or the chunks in it that failed their
        checksum (then no batch)."""
        conn = self._require_open()
        try:
            row = conn.execute("SELECT acked_id FROM cursors WHERE name = ?", (sink,)).fetchone()
            if row is None:
                raise ValueError(f"unknown sink {sink!r}: register_sinks() it first")
            acked_id = row[0] if after is None else max(row[0], after)
            span = _select_chunks(conn, acked_id, max_lines)
            if span is None:
                return None, []
            payloads: list[bytes] = []
            damaged: list[_Damaged] = []
            for chunk_id, payload, stored in conn.execute(
                "SELECT chunks.id, payload, crc FROM chunks LEFT JOIN chunk_crc USING (id) "
                "WHERE chunks.id > ? AND chunks.id <= ? ORDER BY chunks.id",
                (acked_id, span.last_id),
            ):
                found = zlib.crc32(payload)
                if stored is not None and found != stored:
                    damaged.append(_Damaged(chunk_id, stored, found))
                payloads.append(payload)
        except sqlite3.Error as exc:
            raise _failure(exc, "read", self.path) from exc
        if damaged:
            return None, damaged
        return Batch(span.last_id, span.lines, b"\n".join(payloads), span.oldest_ns,
                     span.newest_ns), []

    def _quarantine(self, damaged: Sequence[_Damaged]) -> None:
        """Move chunks whose payload no longer matches its checksum into ``quarantine``.

        They are never sent (a changed digit is a wrong reading in the store, silently),
        nor silently deleted: the row keeps the payload as found and both checksums for an
        operator to inspect. Each is logged once at ERROR and counted in the stats
        (``quarantined_chunks_total``/``quarantined_lines_total``); the held totals drop as
        for a prune. One transaction, so a crash leaves the chunk either here or there.
        """
        found_ns = time.time_ns()

        def body(conn: sqlite3.Connection, _short: bool) -> tuple[dict[str, int], list[Any]]:
            counters = dict(self._meta)
            moved: list[Any] = []
            for bad in damaged:
                row = conn.execute(
                    "SELECT n, nbytes, oldest_ns, newest_ns FROM chunks WHERE id = ?",
                    (bad.chunk_id,),
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO quarantine (id, n, nbytes, oldest_ns, newest_ns, "
                    "crc_stored, crc_found, found_ns, payload) SELECT id, n, nbytes, oldest_ns, "
                    "newest_ns, ?, ?, ?, payload FROM chunks WHERE id = ?",
                    (bad.stored, bad.found, found_ns, bad.chunk_id),
                )
                conn.execute("DELETE FROM chunks WHERE id = ?", (bad.chunk_id,))
                conn.execute("DELETE FROM chunk_crc WHERE id = ?", (bad.chunk_id,))
                n, nbytes = row[0], row[1]
                for key, change in (("lines_held", -n), ("chunks_held", -1),
                                    ("bytes_held", -nbytes), ("quarantined_chunks_total", 1),
                                    ("quarantined_lines_total", n)):
                    counters[key] += change
                moved.append((bad, *row))
            self._write_meta(conn, counters)
            return counters, moved

        self._meta, moved = self._write("quarantining a damaged chunk", body)
        for bad, n, _nbytes, oldest, newest in moved:
            log.error(
                "BUFFER CHUNK %d (%d lines, readings %s to %s) IS DAMAGED: its payload no "
                "longer matches the checksum written with it (crc32 %08x, now %08x; bitrot "
                "on the card?). It is NOT forwarded: moved to the quarantine table of %s "
                "(sqlite3 %s \"SELECT payload FROM quarantine WHERE id = %d\"); delivery "
                "goes on with the next chunk",
                bad.chunk_id, n, _iso(oldest), _iso(newest), bad.stored, bad.found,
                self.path, self.path, bad.chunk_id,
            )

    def ack(self, sink: str, last_id: int) -> None:
        """Record that ``sink`` stored every chunk up to ``last_id``; prune what all have.

        The cursor never moves backwards: a stale or repeated ack is a no-op.
        """
        with self._lock:
            self._meta = self._write("ack", lambda conn, _short: self._ack(conn, sink, last_id))

    def _ack(self, conn: sqlite3.Connection, sink: str, last_id: int) -> dict[str, int]:
        counters = dict(self._meta)
        row = conn.execute("SELECT acked_id FROM cursors WHERE name = ?", (sink,)).fetchone()
        if row is None:
            raise ValueError(f"unknown sink {sink!r}: register_sinks() it first")
        if last_id <= row[0]:
            return counters
        if last_id > self._last_id(conn):
            raise ValueError(f"ack of chunk {last_id} that was never written")
        conn.execute("UPDATE cursors SET acked_id = ? WHERE name = ?", (last_id, sink))
        self._prune(conn, counters)
        return counters

    # -- inspection and closing ----------------------------------------------------------

    def stats(self) -> BufferStats:
        """A consistent snapshot: totals from ``meta``, lags from the covering index."""
        with self._lock:
            conn = self._require_open()
            try:
                return _query_stats(conn, self.path)
            except sqlite3.Error as exc:
                raise _failure(exc, "stats", self.path) from exc

    def close(self) -> None:
        """Checkpoint the WAL into the database file, truncate it, and close. Idempotent."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if busy:
                    log.info("buffer %s: WAL checkpoint incomplete (readers active)", self.path)
            except sqlite3.Error as exc:
                log.warning("buffer %s: WAL checkpoint at close failed: %s", self.path, exc)
            finally:
                conn.close()


def _fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- asyncio wrapper ---------------------------------------------------------------------

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _report_orphan(name: object, job: asyncio.Future[Any]) -> None:
    """Log the failure of a buffer call that ran on after its caller was cancelled."""
    if job.cancelled():
        return
    exc = job.exception()
    if exc is not None:
        log.warning("buffer: %s, whose caller had been cancelled, failed: %s", name, exc)


class AsyncBuffer:
    """Runs a :class:`Buffer` on one dedicated worker thread.

    Commits wait for fsync (milliseconds on flash, more under load); on the event loop that
    would stall every driver and forwarder. One worker thread keeps SQLite single-threaded
    and runs calls in the order they were made. A call whose awaiting task is cancelled
    still runs to completion on the worker, in its place in the queue, even if it had not
    started yet (an append may commit, an ack is recorded); the awaiter gets
    ``CancelledError`` at once. Harmless for appends (delivery is at-least-once) and
    needed for acks, or a stopped forwarder's sink would get its last batch again.
    Sequences passed to :meth:`append` must not be mutated until it returns.
    """

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iotgw-buffer")
        self._closed = False

    @property
    def path(self) -> Path:
        return self.buffer.path

    @property
    def recovered_from_corruption(self) -> Path | None:
        return self.buffer.recovered_from_corruption

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Queue ``fn`` on the worker and wait for it; the call runs even if we are cancelled.

        ``run_in_executor`` would cancel a call still queued behind another when its
        awaiter is cancelled: a forwarder stopped while its ack waited lost the ack and the
        sink got the batch again. The worker's future is shielded instead, so cancelling
        only stops the waiting (``CancelledError`` as usual); the call keeps its place in
        the queue, and an error it raises after its caller left is logged, not lost.
        """
        if self._closed:
            raise BufferFailure(f"buffer {self.buffer.path} is closed")
        job = asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(functools.partial(_report_orphan, getattr(fn, "__name__", fn)))
            raise

    async def open(self) -> Path | None:
        return await self._run(self.buffer.open)

    async def register_sinks(self, names: Iterable[str]) -> None:
        await self._run(self.buffer.register_sinks, list(names))

    async def append(self, lines: Sequence[bytes], oldest_ns: int, newest_ns: int) -> AppendResult:
        return await self._run(self.buffer.append, lines, oldest_ns, newest_ns)

    async def commit_with(self, doing: str, lines: Sequence[bytes], oldest_ns: int,
                          newest_ns: int, body: Callable[[sqlite3.Connection], _T]
                          ) -> tuple[AppendResult, _T]:
        return await self._run(self.buffer.commit_with, doing, lines, oldest_ns, newest_ns,
                               body)

    async def query(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        return await self._run(self.buffer.query, body)

    async def read(self, sink: str, max_lines: int, after: int | None = None) -> Batch | None:
        return await self._run(self.buffer.read, sink, max_lines, after)

    async def ack(self, sink: str, last_id: int) -> None:
        await self._run(self.buffer.ack, sink, last_id)

    async def stats(self) -> BufferStats:
        return await self._run(self.buffer.stats)

    async def close(self) -> None:
        """Close the buffer (checkpoint) on the worker, then stop the worker."""
        if self._closed:
            return
        try:
            await self._run(self.buffer.close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)


# -- read-only access for the CLI ----------------------------------------------------------


def read_stats(path: Path) -> BufferStats:
    """Statistics of the buffer at ``path``, opened read-only.

    Safe while the gateway runs: a WAL reader takes no lock the writer waits for, never
    checkpoints and writes nothing to the database. Raises :class:`BufferFailure` if the file
    is missing or unreadable (it is never moved or repaired from here).
    """
    path = Path(path)
    if not path.is_file():
        raise BufferFailure(f"no buffer file at {path}")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,
        )
    except sqlite3.Error as exc:
        raise _failure(exc, "opening read-only", path) from exc
    try:
        return _query_stats(conn, path)
    except sqlite3.Error as exc:
        raise _failure(exc, "reading stats", path) from exc
    finally:
        conn.close()


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h ago"
    if hours:
        return f"{hours}h {minutes}m ago"
    if minutes:
        return f"{minutes}m {secs}s ago"
    return f"{secs}s ago"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(time_ns: int | None, now_ns: int) -> str:
    if time_ns is None:
        return "-"
    return f"{_iso(time_ns)} ({_age((now_ns - time_ns) / 1e9)})"


def format_stats(stats: BufferStats, now_ns: int | None = None) -> str:
    """A short human-readable table of ``stats`` for ``iotgw buffer stats``."""
    now = time.time_ns() if now_ns is None else now_ns
    held = _size(stats.bytes_held)
    if stats.max_bytes:
        held += f" of {_size(stats.max_bytes)} ({100 * stats.bytes_held / stats.max_bytes:.0f}%)"
        if stats.when_full:
            held += f", {stats.when_full} when full"
    rows = [
        ("buffer", str(stats.path)),
        ("depth", f"{stats.depth_lines:,} lines in {stats.depth_chunks:,} chunks"),
        ("payload", held),
        ("on disk", _size(stats.file_bytes)),
        ("oldest reading", _when(stats.oldest_time_ns, now)),
        ("newest committed", _when(stats.newest_time_ns, now)),
        ("committed total", f"{stats.committed_total:,} lines"),
        ("dropped (full)", f"{stats.dropped_full_total:,} lines"),
        ("quarantined", f"{stats.quarantined_lines_total:,} lines in "
         f"{stats.quarantined_chunks_total:,} damaged chunks"),
    ]
    width = max(len(label) for label, _ in rows)
    out = [f"{label:<{width}}  {value}" for label, value in rows]
    out.append("")
    if not stats.sinks:
        out.append("no sink cursors")
        return "\n".join(out)
    name_width = max(4, *(len(name) for name in stats.sinks))
    out.append(f"{'sink':<{name_width}}  {'lag lines':>12}  oldest pending")
    for lag in stats.sinks.values():
        out.append(
            f"{lag.name:<{name_width}}  {lag.lag_lines:>12,}  {_when(lag.oldest_pending_ns, now)}"
        )
    return "\n".join(out)
