"""Read a SQLite ``-wal`` file before SQLite does, to say what its recovery will throw away.

SQLite replays a WAL up to the last commit frame of an unbroken chain of frames whose salts
match the header and whose cumulative checksums hold; everything after the first bad frame
is dropped without a word. After a crash that is the right thing for an unfinished write,
but when the frames dropped include *commit* frames, transactions the gateway already
reported as committed are gone, and the operator must hear about it. The format is the
documented one (https://www.sqlite.org/fileformat2.html#walformat):

* a 32-byte header: magic ``0x377f0682`` (checksums little-endian) or ``0x377f0683``
  (big-endian), format version, page size, checkpoint sequence, salt-1, salt-2 and a
  checksum of its first 24 bytes;
* frames of a 24-byte header (page number, database size after commit, non-zero only on
  a commit frame, salt-1, salt-2, cumulative checksum) followed by one page.

Frames with salts other than the header's are left over from before the last WAL reset
and are normal; they are not reported. The checksum is pure Python (about 0.1 s per MiB);
the WAL is usually a few MiB after a crash and nothing at all after a clean stop.

:func:`check_wal` is what the buffer calls at open: it reports and keeps a forensic copy.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.private import open_private

log = logging.getLogger("iotgw.buffer")

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_MAGIC_LE = 0x377F0682
_MAGIC_BE = 0x377F0683
_FORMAT_VERSION = 3007000
_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class WalReport:
    """What SQLite will keep and drop of one WAL file.

    ``header_ok`` False means the whole file (``size`` bytes) is ignored by SQLite.
    ``discarded_frames`` counts frames of the current generation (matching salts) that
    SQLite will not replay because the chain broke before them; ``discarded_commits`` are
    the commit frames among them: whole transactions that had been committed. Frames after
    the last good commit of an intact chain (an unfinished transaction) are not counted.

    ``partial_frame_bytes`` is non-zero when the file ends inside a frame: it was cut
    short. A file truncated on a frame boundary looks like any WAL and cannot be told; one
    cut inside a frame can, but what was after the cut is gone: how many frames or commits
    it held cannot be known, so none are counted (the incomplete frame is not counted
    either, commit marker or not). ``dropped_bytes`` is what SQLite's recovery drops: the
    bytes after the end of the last valid commit frame.
    """

    size: int
    header_ok: bool
    page_size: int = 0
    valid_frames: int = 0
    valid_commits: int = 0
    discarded_frames: int = 0
    discarded_commits: int = 0
    partial_frame_bytes: int = 0
    dropped_bytes: int = 0

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER_SIZE + self.page_size

    @property
    def cut_short(self) -> bool:
        """The file ends inside a frame: truncated, or a write interrupted mid-frame."""
        return self.header_ok and self.partial_frame_bytes > 0

    @property
    def loses_commits(self) -> bool:
        """SQLite's recovery will silently drop committed transactions (or the whole WAL)."""
        if not self.header_ok:
            return self.size > 0
        return self.discarded_commits > 0

    @property
    def torn_tail(self) -> bool:
        """Frames are dropped but no commit among them: a write cut short, e.g. by a power
        cut; with ``synchronous=full`` that transaction had not been reported committed."""
        return (self.header_ok and self.discarded_frames > 0 and not self.discarded_commits
                and not self.cut_short)


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), continuing from s0/s1."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1


def _header(data: bytes) -> tuple[bool, int, int, int, int, int] | None:
    """(big-endian checksums, page size, salt-1, salt-2, checksum-1, checksum-2) of a valid
    WAL header, or None when SQLite would ignore the whole file."""
    if len(data) < WAL_HEADER_SIZE:
        return None
    magic, version, page_size, _seq, salt1, salt2, ck1, ck2 = struct.unpack(
        ">8I", data[:WAL_HEADER_SIZE])
    big_endian = magic == _MAGIC_BE
    page_ok = 512 <= page_size <= 65536 and page_size & (page_size - 1) == 0
    if magic not in (_MAGIC_LE, _MAGIC_BE) or version != _FORMAT_VERSION or not page_ok:
        return None
    if _checksum(data[:24], 0, 0, big_endian) != (ck1, ck2):
        return None
    return big_endian, page_size, salt1, salt2, ck1, ck2


def inspect_wal(path: Path, database_bytes: int | None = None) -> WalReport | None:
    """Parse the WAL at ``path``; ``None`` if there is none (or it is empty).

    ``database_bytes`` (the size of the database file) bounds what a commit frame's
    "database size" can be: a damaged frame header with garbage there is not counted as a
    commit. Without it any non-zero value counts.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    if not data:
        return None
    size = len(data)
    if size < WAL_HEADER_SIZE:
        return WalReport(size=size, header_ok=False)
    header = _header(data)
    if header is None:
        return WalReport(size=size, header_ok=False)
    big_endian, page_size, salt1, salt2, ck1, ck2 = header

    frame_size = FRAME_HEADER_SIZE + page_size
    total_frames = (size - WAL_HEADER_SIZE) // frame_size + 1
    most_pages = (
        _MASK if database_bytes is None else database_bytes // page_size + total_frames
    )
    s0, s1 = ck1, ck2
    frames = valid = commits = 0
    discarded = discarded_commits = 0
    broken = False
    offset = WAL_HEADER_SIZE
    while offset + frame_size <= size:
        _page, db_size, f_salt1, f_salt2, f_ck1, f_ck2 = struct.unpack(
            ">6I", data[offset : offset + FRAME_HEADER_SIZE]
        )
        ours = (f_salt1, f_salt2) == (salt1, salt2)
        if not broken:
            if ours:
                s0, s1 = _checksum(data[offset : offset + 8], s0, s1, big_endian)
                s0, s1 = _checksum(
                    data[offset + FRAME_HEADER_SIZE : offset + frame_size], s0, s1, big_endian
                )
                if (s0, s1) == (f_ck1, f_ck2):
                    frames += 1
                    if db_size:
                        valid, commits = frames, commits + 1
                    offset += frame_size
                    continue
            broken = True
        if ours:
            discarded += 1
            if 0 < db_size <= most_pages:
                discarded_commits += 1
        offset += frame_size
    return WalReport(
        size=size,
        header_ok=True,
        page_size=page_size,
        valid_frames=valid,
        valid_commits=commits,
        discarded_frames=discarded,
        discarded_commits=discarded_commits,
        partial_frame_bytes=size - offset,
        dropped_bytes=size - (WAL_HEADER_SIZE + valid * frame_size),
    )


def check_wal(wal: Path, database_bytes: int) -> WalReport | None:
    """Inspect ``wal`` before SQLite opens it and say what its recovery will drop.

    Lost commits (or a WAL without a valid header) are logged at ERROR with their counts
    and the WAL is first copied to ``<wal>.corrupt-<UTC time>`` (0600) for forensics; a
    torn tail without a commit is a WARNING. Nothing is changed: SQLite then keeps the
    valid prefix as it always would.
    """
    try:
        report = inspect_wal(wal, database_bytes)
    except OSError as exc:
        log.warning("buffer WAL %s: cannot read it to check it: %s", wal, exc)
        return None
    if report is None:
        return None
    if report.loses_commits:
        _report_loss(wal, report, copy_aside(wal))
    elif report.cut_short:
        _report_cut(wal, report, copy_aside(wal))
    elif report.torn_tail:
        log.warning(
            "buffer WAL %s ends in %d frames of a write that was cut short (power loss?); it "
            "had not been committed, nothing committed is lost", wal, report.discarded_frames,
        )
    return report


def copy_aside(wal: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    copy = wal.with_name(f"{wal.name}.corrupt-{stamp}")
    try:
        fd = open_private(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "wb") as out, wal.open("rb") as src:
            while block := src.read(1 << 20):
                out.write(block)
    except OSError as exc:
        return f"could not be copied aside ({exc})"
    return f"copied to {copy}"


def _report_loss(wal: Path, report: WalReport, kept: str) -> None:
    if not report.header_ok:
        log.error(
            "BUFFER WAL %s (%d bytes) HAS NO VALID HEADER: SQLite ignores it entirely, so "
            "every commit since the last checkpoint is LOST; it was %s", wal, report.size, kept,
        )
        return
    log.error(
        "BUFFER WAL %s IS DAMAGED: %d frames holding %d committed transactions come after a "
        "broken frame and are DISCARDED by SQLite's recovery (the readings in them are LOST); "
        "the first %d commits (%d frames) are kept.%s The WAL was %s",
        wal, report.discarded_frames, report.discarded_commits, report.valid_commits,
        report.valid_frames, _cut_note(report), kept,
    )


def _cut_note(report: WalReport) -> str:
    if not report.cut_short:
        return ""
    return (f" The file also ends {report.partial_frame_bytes} bytes into a frame of "
            f"{report.frame_size}: it was cut short, and whatever followed is gone too "
            "(how many commits that was cannot be known).")


def _report_cut(wal: Path, report: WalReport, kept: str) -> None:
    """A WAL that ends inside a frame: say what is known, never a count of what is not."""
    log.error(
        "BUFFER WAL %s IS CUT SHORT: it ends %d bytes into frame %d (a frame is %d bytes). "
        "SQLite's recovery keeps %d commits (%d frames) and drops the last %d bytes. If the "
        "file was truncated (a damaged card, a bad copy), the transactions written after "
        "the cut are LOST and how many there were cannot be known from what is left; if a "
        "write was interrupted mid-frame (power cut, kill -9), it had not been reported "
        "committed and nothing is lost. The WAL was %s",
        wal, report.partial_frame_bytes,
        (report.size - report.partial_frame_bytes - WAL_HEADER_SIZE) // report.frame_size + 1,
        report.frame_size, report.valid_commits, report.valid_frames, report.dropped_bytes,
        kept,
    )


def rebuild_from_wal(path: Path) -> tuple[bytes, int] | None:
    """The database as the WAL's last valid commit left it, when the WAL alone holds every
    page of it; ``(image, commits)``, else None.

    For a ``buffer.db`` found empty (0 bytes) beside its WAL: SQLite would open the empty
    file as a new database and every committed reading would be gone, yet a WAL that was
    never checkpointed (a crash soon after start, or a card that lost the main file's
    blocks) often holds every page of the last commit. The frames are walked exactly as
    SQLite's recovery does (matching salts, unbroken cumulative checksums, up to the last
    commit frame); the newest copy of each page wins.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    header = _header(data)
    if header is None:
        return None
    big_endian, page_size, salt1, salt2, ck1, ck2 = header
    frame_size = FRAME_HEADER_SIZE + page_size
    s0, s1 = ck1, ck2
    pending: dict[int, bytes] = {}
    committed: dict[int, bytes] = {}
    pages = commits = 0
    offset = WAL_HEADER_SIZE
    while offset + frame_size <= len(data):
        page_no, db_size, f_salt1, f_salt2, f_ck1, f_ck2 = struct.unpack(
            ">6I", data[offset:offset + FRAME_HEADER_SIZE])
        if (f_salt1, f_salt2) != (salt1, salt2):
            break
        body = data[offset + FRAME_HEADER_SIZE:offset + frame_size]
        s0, s1 = _checksum(data[offset:offset + 8], s0, s1, big_endian)
        s0, s1 = _checksum(body, s0, s1, big_endian)
        if (s0, s1) != (f_ck1, f_ck2):
            break
        pending[page_no] = body
        if db_size:
            committed.update(pending)
            pending.clear()
            pages, commits = db_size, commits + 1
        offset += frame_size
    if not commits or any(n not in committed for n in range(1, pages + 1)):
        return None
    return b"".join(committed[n] for n in range(1, pages + 1)), commits
