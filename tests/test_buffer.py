"""The durable buffer, on real files: cursors, pruning, limits, restarts, kill -9, corruption."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from gateway.buffer import (
    AppendResult,
    AsyncBuffer,
    Buffer,
    format_stats,
    read_stats,
)
from gateway.errors import BufferFailure
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000_000_000


def lines(start: int, count: int) -> list[bytes]:
    """``count`` lines of exactly 9 bytes each: ``line-0000`` ..."""
    return [b"line-%04d" % i for i in range(start, start + count)]


def open_buffer(path: Path, **kwargs: Any) -> Buffer:
    kwargs.setdefault("max_bytes", 10 * 1024 * 1024)
    kwargs.setdefault("when_full", "drop_oldest")
    buf = Buffer(path, **kwargs)
    buf.open()
    return buf


def drain(buf: Buffer, sink: str) -> list[bytes]:
    """Everything pending for ``sink`` (reads and acks)."""
    out: list[bytes] = []
    while (batch := buf.read(sink, 1000)) is not None:
        out.extend(batch.payload.split(b"\n"))
        buf.ack(sink, batch.last_id)
    return out


# -- cursors and pruning ----------------------------------------------------------------


def test_round_trip_two_sinks_prunes_only_after_both_acked(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buf.db", chunk_lines=2)
    buf.register_sinks(["a", "b"])
    assert buf.read("a", 10) is None

    assert buf.append(lines(0, 5), T0, T0 + 4) == AppendResult(stored=5, dropped=0)
    stats = buf.stats()
    assert (stats.depth_lines, stats.depth_chunks) == (5, 3)  # chunks of 2, 2, 1
    assert stats.bytes_held == 2 * 19 + 9
    assert stats.committed_total == 5
    assert stats.newest_time_ns == T0 + 4
    assert stats.oldest_time_ns == T0

    # Whole chunks up to max_lines: 2 + 2 would exceed 3.
    first = buf.read("a", 3)
    assert first is not None
    assert (first.lines, first.payload) == (2, b"line-0000\nline-0001")
    assert first.oldest_ns == T0
    # Reading does not move the cursor.
    assert buf.read("a", 3) == first
    # A chunk bigger than max_lines still comes out whole.
    assert buf.read("a", 1) == first

    buf.ack("a", first.last_id)
    rest = buf.read("a", 100)
    assert rest is not None
    assert rest.payload == b"line-0002\nline-0003\nline-0004"
    buf.ack("a", rest.last_id)
    assert buf.read("a", 100) is None

    stats = buf.stats()
    assert stats.depth_lines == 5, "b has not acked anything: nothing may be pruned"
    assert stats.sinks["a"].lag_lines == 0
    assert stats.sinks["a"].oldest_pending_ns is None
    assert stats.sinks["b"].lag_lines == 5
    assert stats.sinks["b"].oldest_pending_ns == T0

    b_first = buf.read("b", 2)
    assert b_first is not None and b_first.payload == first.payload
    buf.ack("b", b_first.last_id)
    stats = buf.stats()
    assert (stats.depth_lines, stats.depth_chunks) == (3, 2)
    assert stats.bytes_held == 19 + 9

    # Stale and repeated acks never move a cursor backwards.
    buf.ack("b", b_first.last_id - 1)
    buf.ack("b", b_first.last_id)
    batch = buf.read("b", 100)
    assert batch is not None and batch.payload == b"line-0002\nline-0003\nline-0004"
    assert drain(buf, "b") == lines(2, 3)
    stats = buf.stats()
    assert (stats.depth_lines, stats.depth_chunks, stats.bytes_held) == (0, 0, 0)
    assert stats.committed_total == 5
    buf.close()


def test_unknown_sink_and_bogus_ack_are_errors(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buf.db")
    buf.register_sinks(["a"])
    buf.append(lines(0, 3), T0, T0)
    with pytest.raises(ValueError):
        buf.read("nope", 10)
    with pytest.raises(ValueError):
        buf.ack("nope", 1)
    with pytest.raises(ValueError):
        buf.ack("a", 999)
    assert buf.stats().depth_lines == 3
    buf.close()


def test_new_sink_starts_at_oldest_buffered_chunk(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buf.db", chunk_lines=3)
    buf.register_sinks(["a"])
    buf.append(lines(0, 9), T0, T0)  # chunks 0-2, 3-5, 6-8
    batch = buf.read("a", 3)
    assert batch is not None
    buf.ack("a", batch.last_id)  # only sink: first chunk pruned at once
    assert buf.stats().depth_lines == 6

    buf.register_sinks(["a", "b"])
    assert buf.stats().sinks["b"].lag_lines == 6
    assert drain(buf, "b") == lines(3, 6)

    # A sink added to an empty buffer starts with what comes next.
    assert drain(buf, "a") == lines(3, 6)
    assert buf.stats().depth_lines == 0
    buf.register_sinks(["a", "b", "c"])
    buf.append(lines(100, 2), T0, T0)
    assert drain(buf, "c") == lines(100, 2)
    buf.close()


def test_removed_sink_no_longer_holds_data(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    buf = open_buffer(path)
    buf.register_sinks(["a", "b"])
    buf.append(lines(0, 10), T0, T0)
    drain(buf, "a")
    assert buf.stats().depth_lines == 10, "b still needs them"
    buf.close()

    buf = open_buffer(path)
    buf.register_sinks(["a"])
    stats = buf.stats()
    assert stats.depth_lines == 0
    assert list(stats.sinks) == ["a"]
    buf.close()


# -- max_bytes ------------------------------------------------------------------------


def test_drop_oldest_evicts_whole_oldest_chunks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 10 lines of 9 bytes joined by newlines = 99 bytes per chunk; 300 bytes hold 3 chunks.
    buf = open_buffer(tmp_path / "buf.db", max_bytes=300, when_full="drop_oldest", chunk_lines=10)
    buf.register_sinks(["a", "b"])
    for start in (0, 10, 20):
        assert buf.append(lines(start, 10), T0, T0) == AppendResult(10, 0)
    assert buf.stats().bytes_held == 297

    # Evicts lines 0-9 although no sink has taken them.
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        assert buf.append(lines(30, 10), T0, T0) == AppendResult(stored=10, dropped=10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 10 lines" in warnings[0]
    assert "10 because the buffer is full (max_bytes: 300 payload bytes" in warnings[0]
    stats = buf.stats()
    assert (stats.depth_lines, stats.bytes_held) == (30, 297)
    assert (stats.committed_total, stats.dropped_full_total) == (40, 10)
    assert stats.sinks["a"].lag_lines == 30

    # One call bigger than the whole buffer: it keeps its newest 3 chunks.
    assert buf.append(lines(40, 50), T0, T0) == AppendResult(stored=30, dropped=50)
    stats = buf.stats()
    assert (stats.depth_lines, stats.bytes_held) == (30, 297)
    assert (stats.committed_total, stats.dropped_full_total) == (70, 60)
    assert drain(buf, "a") == lines(60, 30)
    assert drain(buf, "b") == lines(60, 30)
    buf.close()


def test_drop_newest_refuses_what_does_not_fit(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buf.db", max_bytes=300, when_full="drop_newest", chunk_lines=10)
    buf.register_sinks(["a"])
    # 99 + 99 + 49 = 247 bytes.
    assert buf.append(lines(0, 25), T0, T0) == AppendResult(25, 0)
    # 53 bytes of room: 5 lines (49 bytes) fit, the other 5 are refused.
    assert buf.append(lines(25, 10), T0, T0) == AppendResult(stored=5, dropped=5)
    assert buf.append(lines(35, 10), T0, T0) == AppendResult(stored=0, dropped=10)
    stats = buf.stats()
    assert (stats.depth_lines, stats.bytes_held) == (30, 296)
    assert (stats.committed_total, stats.dropped_full_total) == (30, 15)

    # Acknowledged data makes room again.
    batch = buf.read("a", 10)
    assert batch is not None
    buf.ack("a", batch.last_id)
    assert buf.append(lines(45, 10), T0, T0) == AppendResult(10, 0)
    assert drain(buf, "a") == lines(10, 20) + lines(45, 10)
    buf.close()


# -- restarts ---------------------------------------------------------------------------


def test_restart_keeps_cursors_data_and_totals(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    buf = open_buffer(path, chunk_lines=4, max_bytes=400, when_full="drop_newest")
    buf.register_sinks(["a", "b"])
    buf.append(lines(0, 12), T0, T0 + 11)
    buf.append(lines(12, 40), T0 + 12, T0 + 51)  # partly refused
    batch = buf.read("a", 8)
    assert batch is not None
    buf.ack("a", batch.last_id)
    before = buf.stats()
    next_a, next_b = buf.read("a", 8), buf.read("b", 8)
    buf.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0

    buf = open_buffer(path, chunk_lines=4, max_bytes=400, when_full="drop_newest")
    assert buf.recovered_from_corruption is None
    buf.register_sinks(["a", "b"])
    after = buf.stats()
    assert (after.depth_lines, after.depth_chunks, after.bytes_held) == (
        before.depth_lines, before.depth_chunks, before.bytes_held)
    assert (after.committed_total, after.dropped_full_total, after.newest_time_ns) == (
        before.committed_total, before.dropped_full_total, before.newest_time_ns)
    assert after.sinks == before.sinks
    assert buf.read("a", 8) == next_a
    assert buf.read("b", 8) == next_b
    buf.close()


_CHILD = r"""
import sys
from pathlib import Path
from gateway.buffer import Buffer

path, seq = Path(sys.argv[1]), int(sys.argv[2])
buf = Buffer(path, 1 << 30, "drop_oldest", synchronous="full", chunk_lines=64)
buf.open()
buf.register_sinks(["check"])
print("ready", flush=True)
while True:
    batch = [b"kill,gw=t seq=%di %d" % (s, s) for s in range(seq, seq + 150)]
    buf.append(batch, seq, seq + 149)
    sys.stdout.write(f"{seq} {seq + 149}\n")
    sys.stdout.flush()
    seq += 150
"""


@pytest.mark.slow
def test_every_committed_append_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    committed: list[tuple[int, int]] = []
    for round_no in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), str(round_no * 10_000_000)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        printed: list[bytes] = []
        ready = threading.Event()

        def collect(stream: IO[bytes] = proc.stdout, printed: list[bytes] = printed,
                    ready: threading.Event = ready) -> None:
            for raw in stream:
                printed.append(raw)
                ready.set()

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        assert ready.wait(30), f"child did not start: {proc.stderr.read()!r}"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(10)
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: {proc.stderr.read()!r}"
        proc.stderr.close()
        proc.stdout.close()
        for raw in printed[1:]:
            if raw.endswith(b"\n"):
                first, last = map(int, raw.split())
                committed.append((first, last))

        buf = Buffer(path, 1 << 30, "drop_oldest", chunk_lines=64)
        assert buf.open() is None, f"seed {seed}: kill -9 must never corrupt the file"
        buf.register_sinks(["check"])
        batch = buf.read("check", 10**9)
        present: set[int] = set()
        if batch is not None:
            for line in batch.payload.split(b"\n"):
                present.add(int(line.split(b"seq=")[1].split(b"i")[0]))
        missing = [r for r in committed if not all(s in present for s in range(r[0], r[1] + 1))]
        assert not missing, f"seed {seed}, round {round_no}: lost committed appends {missing[:5]}"
        # Atomic appends: every 150-line group is complete or absent.
        groups: dict[tuple[int, int], int] = {}
        for s in present:
            key = (s // 10_000_000, s % 10_000_000 // 150)
            groups[key] = groups.get(key, 0) + 1
        assert set(groups.values()) <= {150}, f"seed {seed}: a partial append is visible"
        buf.close()
    assert len(committed) >= 10


# -- corruption --------------------------------------------------------------------------


def _assert_works(buf: Buffer) -> None:
    buf.register_sinks(["a"])
    assert buf.append(lines(0, 3), T0, T0) == AppendResult(3, 0)
    assert drain(buf, "a") == lines(0, 3)


def _moved_files(path: Path) -> list[Path]:
    found = path.parent.glob(f"{path.name}.corrupt-*")
    return sorted(p for p in found if not p.name.endswith(("-wal", "-shm")))


def test_garbage_file_is_moved_aside_and_a_fresh_buffer_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state" / "buf.db"
    path.parent.mkdir()
    garbage = random.Random(1).randbytes(20_000)
    path.write_bytes(garbage)
    Path(f"{path}-wal").write_bytes(b"not a wal either")

    buf = Buffer(path, 10 * 1024 * 1024, "drop_oldest")
    with caplog.at_level(logging.ERROR, logger="iotgw.buffer"):
        moved = buf.open()
    assert moved is not None and moved == buf.recovered_from_corruption
    assert moved.name.startswith("buf.db.corrupt-")
    assert moved.read_bytes() == garbage
    assert Path(f"{moved}-wal").read_bytes() == b"not a wal either"
    assert _moved_files(path) == [moved]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "iotgw.buffer"]
    assert errors and str(moved) in errors[0].getMessage()
    _assert_works(buf)
    buf.close()

    # The fresh buffer is healthy: the next start does not move anything.
    again = open_buffer(path)
    assert again.recovered_from_corruption is None
    assert _moved_files(path) == [moved]
    again.close()


def _damaged_copy(tmp_path: Path, how: str) -> Path:
    path = tmp_path / f"{how}.db"
    buf = open_buffer(path, chunk_lines=50)
    buf.register_sinks(["a"])
    for i in range(40):
        buf.append([b"m,i=%d v=%di" % (i, j) + b"x" * 80 for j in range(200)], T0, T0)
    buf.close()
    size = path.stat().st_size
    with path.open("r+b") as f:
        if how == "truncated":
            f.truncate(size // 2)
        else:  # partially overwritten, header intact
            f.seek(size // 3)
            f.write(random.Random(2).randbytes(64 * 1024))
    return path


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_damaged_database_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    path = _damaged_copy(tmp_path, how)
    damaged = path.read_bytes()
    buf = Buffer(path, 10 * 1024 * 1024, "drop_oldest")
    with caplog.at_level(logging.ERROR, logger="iotgw.buffer"):
        moved = buf.open()
    assert moved is not None and moved.read_bytes() == damaged
    assert any(
        r.levelno == logging.ERROR and str(moved) in r.getMessage() for r in caplog.records
    )
    stats = buf.stats()
    assert (stats.depth_lines, stats.committed_total) == (0, 0)
    _assert_works(buf)
    buf.close()


def test_foreign_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    buf = Buffer(path, 10 * 1024 * 1024, "drop_oldest")
    assert buf.open() is not None
    _assert_works(buf)
    buf.close()


def test_system_errors_raise_and_move_nothing(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    path.mkdir()  # a directory where the file should be: not corruption, a setup problem
    with pytest.raises(BufferFailure):
        Buffer(path, 10 * 1024 * 1024, "drop_oldest").open()
    assert path.is_dir()
    assert _moved_files(path) == []


# -- read-only stats ----------------------------------------------------------------------


def test_read_stats_while_another_connection_writes(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    writer = open_buffer(path, chunk_lines=100, synchronous="normal")
    writer.register_sinks(["influx", "backup"])
    writer.append(lines(0, 100), T0, T0)
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(1, 200):
                writer.append(lines(i * 100, 100), T0 + i, T0 + i)
                if i % 4 == 0:
                    batch = writer.read("influx", 200)
                    assert batch is not None
                    writer.ack("influx", batch.last_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen = 0
    while not done.is_set() or seen == 0:
        stats = read_stats(path)
        seen += 1
        assert stats.depth_lines % 100 == 0
        assert stats.committed_total % 100 == 0
        assert stats.sinks["backup"].lag_lines == stats.depth_lines
        assert stats.sinks["influx"].lag_lines <= stats.depth_lines
    thread.join()
    assert not errors, errors
    assert seen > 1

    final = read_stats(path)
    live = writer.stats()
    assert (final.depth_lines, final.committed_total, final.sinks) == (
        live.depth_lines, live.committed_total, live.sinks)
    assert final.committed_total == 20_000
    assert final.max_bytes == 10 * 1024 * 1024 and final.when_full == "drop_oldest"
    text = format_stats(final, now_ns=T0 + 90 * 10**9)
    assert "20,000 lines" in text
    assert "backup" in text and "influx" in text
    assert "2023-11-14T22:13:20Z (1m 30s ago)" in text
    writer.close()


def test_read_stats_refuses_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(BufferFailure):
        read_stats(tmp_path / "absent.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x00\x01garbage" * 1000)
    with pytest.raises(BufferFailure):
        read_stats(garbage)
    assert garbage.read_bytes() == b"\x00\x01garbage" * 1000


def test_format_stats_of_an_empty_buffer(tmp_path: Path) -> None:
    buf = open_buffer(tmp_path / "buf.db")
    text = format_stats(buf.stats())
    assert "0 lines in 0 chunks" in text
    assert "no sink cursors" in text
    buf.close()


# -- asyncio ------------------------------------------------------------------------------


async def test_async_buffer_runs_on_its_worker_thread(tmp_path: Path) -> None:
    threads: list[str] = []

    class Spy(Buffer):
        def append(self, lines: Sequence[bytes], oldest_ns: int,
                   newest_ns: int) -> AppendResult:
            threads.append(threading.current_thread().name)
            return super().append(lines, oldest_ns, newest_ns)

    abuf = AsyncBuffer(Spy(tmp_path / "buf.db", 10 * 1024 * 1024, "drop_oldest", chunk_lines=4))
    assert await abuf.open() is None
    await abuf.register_sinks(["a"])
    assert await abuf.append(lines(0, 10), T0, T0 + 9) == AppendResult(10, 0)
    batch = await abuf.read("a", 100)
    assert batch is not None and batch.lines == 10
    await abuf.ack("a", batch.last_id)
    stats = await abuf.stats()
    assert (stats.depth_lines, stats.committed_total) == (0, 10)
    assert threads and threads[0].startswith("iotgw-buffer")
    await abuf.close()
    await abuf.close()
    with pytest.raises(BufferFailure):
        await abuf.stats()


def test_read_after_a_position_kept_in_memory(tmp_path: Path) -> None:
    """A forwarder whose ack could not be recorded reads on from its delivered position;
    the cursor itself stays until an ack works, then one ack covers everything."""
    buf = open_buffer(tmp_path / "buf.db", chunk_lines=2)
    buf.register_sinks(["a"])
    buf.append(lines(0, 6), T0, T0)
    first = buf.read("a", 2)
    assert first is not None and first.payload == b"line-0000\nline-0001"
    second = buf.read("a", 2, after=first.last_id)
    assert second is not None and second.payload == b"line-0002\nline-0003"
    assert buf.read("a", 2) == first  # the recorded cursor has not moved
    assert buf.read("a", 2, after=0) == first  # never behind the recorded cursor
    buf.ack("a", second.last_id)
    assert buf.stats().depth_lines == 2
    assert drain(buf, "a") == lines(4, 2)
    buf.close()


async def test_a_cancelled_call_still_queued_runs_in_its_place(tmp_path: Path) -> None:
    """Found by an outside probe: ``run_in_executor`` dropped a queued call whose awaiter
    was cancelled, so a forwarder stopped while its ack waited behind a commit sent the
    batch again at restart. The call must run, in order; the awaiter sees CancelledError."""
    abuf = AsyncBuffer(Buffer(tmp_path / "buf.db", 10 * 1024 * 1024, "drop_oldest"))
    await abuf.open()
    await abuf.register_sinks(["a"])
    await abuf.append(lines(0, 3), T0, T0)
    batch = await abuf.read("a", 100)
    assert batch is not None
    busy, release = threading.Event(), threading.Event()

    def hold_the_worker(_conn: sqlite3.Connection) -> None:
        busy.set()
        release.wait()

    holding = asyncio.ensure_future(abuf.query(hold_the_worker))
    ack = asyncio.ensure_future(abuf.ack("a", batch.last_id))
    after = asyncio.ensure_future(abuf.append(lines(3, 2), T0, T0))
    await eventually(busy.is_set, what="the worker is busy")
    ack.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ack
    release.set()
    await holding
    await after
    stats = await abuf.stats()  # queued behind the ack: it has run by now
    assert stats.sinks["a"].acked_id == batch.last_id
    again = await abuf.read("a", 100)
    assert again is not None and again.payload == b"\n".join(lines(3, 2))
    await abuf.close()


async def test_a_cancelled_call_that_fails_later_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    abuf = AsyncBuffer(Buffer(tmp_path / "buf.db", 10 * 1024 * 1024, "drop_oldest"))
    await abuf.open()
    release = threading.Event()
    holding = asyncio.ensure_future(abuf.query(lambda _conn: release.wait()))
    bad = asyncio.ensure_future(abuf.ack("nobody", 1))
    await asyncio.sleep(0)
    bad.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bad
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        release.set()
        await holding
        await abuf.stats()
        await eventually(lambda: [r for r in caplog.records if "cancelled" in r.getMessage()],
                         what="the orphaned call's failure is logged")
    message = [r.getMessage() for r in caplog.records if "cancelled" in r.getMessage()]
    assert len(message) == 1 and "unknown sink 'nobody'" in message[0]
    await abuf.close()


# -- checksums: bitrot inside a payload -----------------------------------------------------


def _flip_digit_on_disk(path: Path, needle: bytes) -> None:
    """Change the last digit of ``needle`` in the closed file: a page SQLite still reads as
    sound (``quick_check`` passes), only the payload is different, as bitrot leaves it."""
    data = path.read_bytes()
    at = data.index(needle) + len(needle) - 1
    with path.open("r+b") as f:
        f.seek(at)
        f.write(b"9" if data[at : at + 1] != b"9" else b"1")


def test_a_chunk_damaged_on_disk_is_quarantined_not_sent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside probe: one changed digit inside a chunk's payload passed
    ``quick_check`` and the store got f0=914.75 instead of 814.75. The chunk's CRC-32 now
    catches it: the chunk is moved to ``quarantine`` (payload as found), logged once at
    ERROR with its id and line count, counted, and delivery goes on with the next chunk."""
    path = tmp_path / "buf.db"
    buf = open_buffer(path, chunk_lines=4)
    buf.register_sinks(["a", "b"])
    buf.append(lines(0, 12), T0, T0 + 11)  # chunks 1-3: line-0000..3, 4..7, 8..11
    first = buf.read("b", 4)
    assert first is not None
    buf.ack("b", first.last_id)  # sink b is past chunk 1 already
    buf.close()
    _flip_digit_on_disk(path, b"line-0005")

    buf = open_buffer(path, chunk_lines=4)
    assert buf.recovered_from_corruption is None  # SQLite sees nothing wrong
    with caplog.at_level(logging.ERROR, logger="iotgw.buffer"):
        assert drain(buf, "a") == lines(0, 4) + lines(8, 4)
        assert drain(buf, "b") == lines(8, 4)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "CHUNK 2 (4 lines" in errors[0] and "quarantine" in errors[0]
    stats = buf.stats()
    assert (stats.quarantined_chunks_total, stats.quarantined_lines_total) == (1, 4)
    assert (stats.depth_lines, stats.depth_chunks, stats.bytes_held) == (0, 0, 0)
    assert "4 lines in 1 damaged chunks" in format_stats(stats)
    buf.close()
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT id, n, payload FROM quarantine").fetchall()
    conn.close()
    assert len(row) == 1 and row[0][:2] == (2, 4)
    assert row[0][2] != b"\n".join(lines(4, 4)) and row[0][2].startswith(b"line-0004\n")
    again = read_stats(path)  # the count survives a restart, and read-only stats see it
    assert again.quarantined_lines_total == 4


def test_checksums_are_written_with_each_chunk_and_pruned_with_it(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    buf = open_buffer(path, chunk_lines=2, max_bytes=60)
    buf.register_sinks(["a"])
    buf.append(lines(0, 10), T0, T0)  # 5 chunks of 19 bytes: only 3 fit, 2 evicted
    batch = buf.read("a", 2)
    assert batch is not None
    buf.ack("a", batch.last_id)  # one pruned
    buf.close()
    with sqlite3.connect(path) as conn:
        ids = conn.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        crcs = conn.execute("SELECT id, crc FROM chunk_crc ORDER BY id").fetchall()
        payloads = conn.execute("SELECT payload FROM chunks ORDER BY id").fetchall()
    conn.close()
    assert [i for i, _ in crcs] == [i for (i,) in ids] == [4, 5]
    assert [c for _, c in crcs] == [zlib.crc32(p) for (p,) in payloads]


# The schema of buffer files written before chunk checksums (kept here verbatim: the test
# is that such a file opens and works).
_SCHEMA_V1 = """
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    n INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    oldest_ns INTEGER NOT NULL,
    newest_ns INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX chunks_summary ON chunks (id, n, nbytes, oldest_ns);
CREATE TABLE cursors (name TEXT PRIMARY KEY, acked_id INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""


def _old_buffer(path: Path, chunks: list[list[bytes]]) -> None:
    """A buffer as the gateway before checksums left it: sink ``a`` at the start."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA_V1)
    payloads = [b"\n".join(part) for part in chunks]
    conn.executemany(
        "INSERT INTO chunks (n, nbytes, oldest_ns, newest_ns, payload) VALUES (?, ?, ?, ?, ?)",
        [(len(part), len(p), T0, T0, p) for part, p in zip(chunks, payloads, strict=True)],
    )
    meta = {"schema": 1, "lines_held": sum(map(len, chunks)), "chunks_held": len(chunks),
            "bytes_held": sum(map(len, payloads)), "committed_total": sum(map(len, chunks)),
            "dropped_full_total": 0, "newest_time_ns": T0, "max_bytes": 10 * 1024 * 1024,
            "when_full": "drop_oldest"}
    conn.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
    conn.execute("INSERT INTO cursors VALUES ('a', 0)")
    conn.close()


def test_a_buffer_written_before_checksums_opens_and_works(tmp_path: Path) -> None:
    """Its chunks have no checksum and are read unchecked; new chunks get one. The chunks
    table keeps its columns, so a gateway rolled back to the older version opens the file
    too (it checks them exactly and would move the file aside otherwise)."""
    path = tmp_path / "buf.db"
    _old_buffer(path, [lines(0, 3), lines(3, 3)])
    _flip_digit_on_disk(path, b"line-0004")  # unchecked: no checksum to tell
    buf = open_buffer(path)
    assert buf.recovered_from_corruption is None
    buf.register_sinks(["a"])
    buf.append(lines(6, 2), T0, T0)
    got = drain(buf, "a")
    assert got[:3] + got[5:] == lines(0, 3) + lines(5, 3) and got[4] != b"line-0004"
    assert buf.stats().quarantined_chunks_total == 0
    buf.append(lines(8, 2), T0, T0)
    buf.close()
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(chunks)")]
        crcs = conn.execute("SELECT id FROM chunk_crc").fetchall()
        # What the older gateway does to a file it shares: prune without knowing chunk_crc.
        conn.execute("DELETE FROM chunks")
    conn.close()
    assert columns == ["id", "n", "nbytes", "oldest_ns", "newest_ns", "payload"]
    assert crcs == [(4,)]  # the chunk appended after the last ack (3 was pruned with it)
    buf = open_buffer(path)
    buf.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM chunk_crc").fetchone()[0] == 0
    conn.close()
