"""Silent loss at start: a zero-length buffer.db and a damaged WAL, built with the real Buffer.

The WAL files are real: readings are committed through :class:`Buffer` and the database
and its WAL are copied while the buffer is open (as a power cut or ``kill -9`` leaves
them: WAL frames not yet checkpointed), then damaged the way a card or a crash does.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.buffer import Buffer

LINES_PER_APPEND = 20
# The documented WAL format (https://www.sqlite.org/fileformat2.html#walformat), read here
# independently of gateway.walcheck.
WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24


def batch(n: int) -> list[bytes]:
    return [b"m,append=%d v=%di" % (n, i) for i in range(LINES_PER_APPEND)]


def open_buffer(path: Path) -> Buffer:
    buf = Buffer(path, 64 * 1024**2, "drop_oldest")
    buf.open()
    return buf


def buffered_appends(buf: Buffer) -> list[int]:
    """Which appends (by number) the buffer holds, in order."""
    buf.register_sinks(["check"])
    got = buf.read("check", 10**9)
    if got is None:
        return []
    numbers = [int(line.split(b"append=")[1].split(b" ")[0]) for line in got.payload.split(b"\n")]
    return sorted(set(numbers), key=numbers.index)


def snapshot(source: Path, target: Path) -> None:
    """Copy the database and its WAL as they are on disk right now (no checkpoint)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    shutil.copyfile(f"{source}-wal", f"{target}-wal")


def crashed_copy(tmp_path: Path, appends: int) -> tuple[Path, int]:
    """A buffer with ``appends`` committed appends still in its WAL; returns (path, the
    number of commit frames before the first append)."""
    live = tmp_path / "live" / "buffer.db"
    buf = open_buffer(live)
    buf.register_sinks(["check"])
    crashed = tmp_path / "crashed" / "buffer.db"
    snapshot(live, crashed)
    before = len(commit_frames(Path(f"{crashed}-wal")))
    for n in range(appends):
        buf.append(batch(n), 1, 2)
    snapshot(live, crashed)
    buf.close()
    assert len(commit_frames(Path(f"{crashed}-wal"))) == before + appends
    return crashed, before


def frame_offset(wal: Path, index: int) -> int:
    page_size = struct.unpack(">I", wal.read_bytes()[8:12])[0]
    return WAL_HEADER_SIZE + index * (FRAME_HEADER_SIZE + page_size)


def frame_headers(wal: Path) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(the header's salts, [(database size after commit, salts)] per frame)."""
    data = wal.read_bytes()
    if not data:
        return b"", []
    page_size = struct.unpack(">I", data[8:12])[0]
    out = []
    offset = WAL_HEADER_SIZE
    while offset + FRAME_HEADER_SIZE + page_size <= len(data):
        db_size = struct.unpack(">I", data[offset + 4 : offset + 8])[0]
        out.append((db_size, data[offset + 8 : offset + 16]))
        offset += FRAME_HEADER_SIZE + page_size
    return data[16:24], out


def commit_frames(wal: Path) -> list[int]:
    """Indexes of the commit frames (non-zero "database size after commit") of the current
    generation (the header's salts)."""
    salts, frames = frame_headers(wal)
    return [i for i, (db_size, frame_salts) in enumerate(frames)
            if db_size and frame_salts == salts]


def buffer_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "iotgw.buffer" and r.levelno >= logging.ERROR]


# -- zero-length database -----------------------------------------------------------------


def test_zero_length_database_after_a_clean_run_is_reported_and_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buffer.db"
    buf = open_buffer(path)
    buf.register_sinks(["check"])
    for n in range(3):
        buf.append(batch(n), 1, 2)
    buf.close()
    path.write_bytes(b"")  # what a lost write-back or a bad copy leaves

    buf = Buffer(path, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.ERROR, logger="iotgw.buffer"):
        moved = buf.open()
    errors = buffer_errors(caplog)
    assert moved is not None and moved.stat().st_size == 0
    assert len(errors) == 1 and "EMPTY" in errors[0] and str(moved) in errors[0]
    assert "buffer.db.reserve" in errors[0]  # the evidence that a previous run existed
    assert buffered_appends(buf) == []
    buf.append(batch(9), 1, 2)
    assert buffered_appends(buf) == [9]
    buf.close()


def test_zero_length_database_is_rebuilt_from_a_wal_that_holds_every_page(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside probe: the WAL of a buffer that crashed before its first
    checkpoint holds every page, so the readings are not lost; they are kept."""
    crashed, _ = crashed_copy(tmp_path, 4)
    crashed.write_bytes(b"")
    wal_bytes = Path(f"{crashed}-wal").read_bytes()
    buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.ERROR, logger="iotgw.buffer"):
        moved = buf.open()
    errors = buffer_errors(caplog)
    assert moved is None
    assert len(errors) == 1 and "WAS EMPTY" in errors[0] and "rebuilt" in errors[0], errors
    assert buffered_appends(buf) == [0, 1, 2, 3], "every committed append kept"
    copies = list(crashed.parent.glob("buffer.db-wal.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == wal_bytes
    buf.close()


def test_zero_length_database_beside_a_partial_wal_is_reported_with_its_commits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = tmp_path / "live" / "buffer.db"
    buf = open_buffer(live)
    buf.register_sinks(["check"])
    for n in range(3):
        buf.append(batch(n), 1, 2)
    with sqlite3.connect(live) as conn:  # the pages so far now live in the main file only
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    buf.append(batch(3), 1, 2)
    crashed = tmp_path / "crashed" / "buffer.db"
    snapshot(live, crashed)
    buf.close()
    crashed.write_bytes(b"")
    wal_bytes = Path(f"{crashed}-wal").read_bytes()
    buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.ERROR, logger="iotgw.buffer"):
        moved = buf.open()
    errors = buffer_errors(caplog)
    assert moved is not None and Path(f"{moved}-wal").read_bytes() == wal_bytes
    assert len(errors) == 1 and "EMPTY" in errors[0] and "commits" in errors[0], errors
    buf.close()


def test_a_fresh_buffer_never_leaves_a_zero_length_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "buffer.db"
    buf = open_buffer(path)
    assert path.stat().st_size > 0
    assert not path.with_name("buffer.db.new").exists()
    buf.close()
    assert path.stat().st_size > 0


# -- damaged WAL ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["page", "frame header"])
def test_damaged_wal_frame_is_reported_and_the_valid_prefix_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    appends = 12
    crashed, setup_commits = crashed_copy(tmp_path, appends)
    wal = Path(f"{crashed}-wal")
    commits = commit_frames(wal)
    # Damage the frame right after the commit of the 5th append: appends 0-4 survive.
    keep = 5
    bad = commits[setup_commits + keep - 1] + 1
    offset = frame_offset(wal, bad) + (FRAME_HEADER_SIZE + 100 if where == "page" else 0)
    with wal.open("r+b") as f:
        f.seek(offset)
        # Garbage, but not in the salts of a frame header: those would make it look like
        # a stale frame, which the next test covers.
        f.write(b"\xa5" * 8)
    damaged = wal.read_bytes()
    lost_commits = len(commits) - (setup_commits + keep)

    buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        assert buf.open() is None  # the database itself is sound: not moved aside
    errors = buffer_errors(caplog)
    assert len(errors) == 1, errors
    assert f"holding {lost_commits} committed transactions" in errors[0]
    assert f"the first {setup_commits + keep} commits" in errors[0]
    copies = list(crashed.parent.glob("buffer.db-wal.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == damaged
    assert str(copies[0]) in errors[0]
    assert buffered_appends(buf) == list(range(keep))
    buf.close()


def test_garbage_wal_header_is_reported_with_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashed, _ = crashed_copy(tmp_path, 3)
    wal = Path(f"{crashed}-wal")
    with wal.open("r+b") as f:
        f.write(b"\x00" * 32)
    size = wal.stat().st_size
    buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.ERROR, logger="iotgw.buffer"):
        buf.open()
    errors = buffer_errors(caplog)
    assert len(errors) == 1 and f"({size} bytes) HAS NO VALID HEADER" in errors[0]
    buf.close()


def test_intact_wal_after_a_crash_is_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashed, _ = crashed_copy(tmp_path, 6)
    buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        buf.open()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert buffered_appends(buf) == list(range(6))
    buf.close()


def test_stale_frames_after_a_wal_reset_are_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    live = tmp_path / "live" / "buffer.db"
    buf = open_buffer(live)
    buf.register_sinks(["check"])
    for n in range(10):
        buf.append(batch(n), 1, 2)
    # Checkpoint from a second connection; the next commit restarts the WAL at its start
    # with new salts, leaving the older frames behind it.
    with sqlite3.connect(live) as other:
        assert other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    other.close()
    buf.append(batch(10), 1, 2)
    crashed = tmp_path / "crashed" / "buffer.db"
    snapshot(live, crashed)
    buf.close()
    salts, frames = frame_headers(Path(f"{crashed}-wal"))
    assert frames[0][1] == salts
    assert sum(1 for _, frame_salts in frames if frame_salts != salts) > 5  # stale frames

    again = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        again.open()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert buffered_appends(again) == list(range(11))
    again.close()


def test_torn_last_frame_without_a_commit_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashed, _ = crashed_copy(tmp_path, 3)
    wal = Path(f"{crashed}-wal")
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    # A frame of the current generation whose write was cut short: right salts, no
    # commit marker, checksum and page garbage.
    torn = struct.pack(">II", 2, 0) + salts + b"\x11" * 8 + b"\x22" * page_size
    wal.write_bytes(data + torn)
    buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        buf.open()
    assert buffer_errors(caplog) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cut short" in warnings[0]
    assert buffered_appends(buf) == list(range(3))
    buf.close()


def test_wal_cut_short_inside_a_frame_reports_what_is_known_not_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside probe: a WAL truncated to half was reported as "1 committed
    transaction discarded" (the frame the cut went through had a commit marker) while
    ~1,500 readings were lost past the cut. The frames after a cut cannot be counted:
    the report says the file is cut short, what is kept and how many bytes are dropped."""
    appends = 10
    crashed, setup_commits = crashed_copy(tmp_path, appends)
    wal = Path(f"{crashed}-wal")
    commits = commit_frames(wal)
    keep = 4
    # Cut through the commit frame of append 5 (it and appends 6-9 are gone from the file).
    cut = frame_offset(wal, commits[setup_commits + keep]) + FRAME_HEADER_SIZE + 100
    kept_end = frame_offset(wal, commits[setup_commits + keep - 1] + 1)
    os.truncate(wal, cut)
    damaged = wal.read_bytes()

    buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        assert buf.open() is None
    errors = buffer_errors(caplog)
    assert len(errors) == 1, errors
    assert "CUT SHORT" in errors[0] and f"ends {FRAME_HEADER_SIZE + 100} bytes into" in errors[0]
    assert f"keeps {setup_commits + keep} commits" in errors[0]
    assert f"drops the last {cut - kept_end} bytes" in errors[0]
    assert "cannot be known" in errors[0] and "committed transactions" not in errors[0]
    copies = list(crashed.parent.glob("buffer.db-wal.corrupt-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == damaged
    assert buffered_appends(buf) == list(range(keep))
    buf.close()


# -- fuzz: damage anywhere a checksum covers -----------------------------------------------

FUZZ_APPENDS = 8


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    return crashed_copy(tmp_path_factory.mktemp("pristine"), FUZZ_APPENDS)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _checksummed_offsets(wal_size: int, page_size: int) -> list[tuple[int, int]]:
    """Byte ranges a WAL checksum covers: the header's first 24 bytes, and per frame its
    page number and its page. A frame's salts and its "database size after commit" are left
    out: damage there in the very last frame looks like a stale frame or an unfinished
    write, which no reader of the format can tell apart (docs/operations.md, section 8)."""
    ranges = [(0, 24)]
    frame = FRAME_HEADER_SIZE + page_size
    offset = WAL_HEADER_SIZE
    while offset + frame <= wal_size:
        ranges.append((offset, offset + 4))
        ranges.append((offset + FRAME_HEADER_SIZE, offset + frame))
        offset += frame
    return ranges


def _damage_and_open(pristine: tuple[Path, int], where: float, garbage: bytes,
                     base: Path) -> None:
    source, _ = pristine
    base.mkdir()
    crashed = base / "buffer.db"
    snapshot(source, crashed)
    wal = Path(f"{crashed}-wal")
    data = bytearray(wal.read_bytes())
    page_size = struct.unpack(">I", bytes(data[8:12]))[0]
    ranges = _checksummed_offsets(len(data), page_size)
    spots = [i for start, end in ranges for i in range(start, end)]
    offset = spots[int(where * (len(spots) - 1))]
    end = min(len(data), offset + len(garbage))
    before = bytes(data[offset:end])
    data[offset:end] = garbage[: end - offset]
    if bytes(data[offset:end]) == before:
        return  # no change: nothing to check
    wal.write_bytes(bytes(data))
    handler = _Records()
    logger = logging.getLogger("iotgw.buffer")
    logger.addHandler(handler)
    try:
        buf = Buffer(crashed, 64 * 1024**2, "drop_oldest")
        buf.open()
        kept = buffered_appends(buf)
        buf.close()
    finally:
        logger.removeHandler(handler)
    # SQLite keeps a prefix, never a hole or a reordering.
    assert kept == list(range(len(kept)))
    errors = [r.getMessage() for r in handler.records if r.levelno >= logging.ERROR]
    if len(kept) < FUZZ_APPENDS:
        assert len(errors) == 1, f"{FUZZ_APPENDS - len(kept)} appends lost silently"
        assert "DAMAGED" in errors[0] or "NO VALID HEADER" in errors[0]
    else:
        assert errors == [], errors


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1), garbage=st.binary(min_size=1, max_size=16))
def test_fuzz_wal_damage_is_never_lost_silently(
    pristine: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory,
    where: float, garbage: bytes,
) -> None:
    _damage_and_open(pristine, where, garbage, tmp_path_factory.mktemp("case") / "c")


@pytest.mark.soak
@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1), garbage=st.binary(min_size=1, max_size=64))
def test_fuzz_wal_damage_long_run(
    pristine: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory,
    where: float, garbage: bytes,
) -> None:
    _damage_and_open(pristine, where, garbage, tmp_path_factory.mktemp("case") / "c")
