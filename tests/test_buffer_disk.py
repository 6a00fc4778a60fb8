"""The buffer on a full or read-only file system: real small file systems made by the test.

A tmpfs of a few MiB is filled with a filler file while readings keep coming and a real
forwarder delivers them to a real file sink; freeing the space must bring lag back to 0
with the same objects (no restart). A loop-mounted ext4 with ``errors=remount-ro`` turns
read-only underneath the open buffer, as a worn SD card does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.buffer import AsyncBuffer, Buffer
from gateway.errors import BufferFailure
from gateway.forwarder import Forwarder
from gateway.sinks.file import FileSink, FileSinkConfig
from gateway.stats import GatewayStats
from tests.smallfs import Mounts, fill, mounted, trigger_ext4_error
from tests.support.wait import eventually

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    yield from mounted(tmp_path)


def readings(tag: str, start: int, count: int) -> list[bytes]:
    """Unique, realistic lines (~100 bytes): ``seq`` tells them apart."""
    return [
        b"energy,device=m%03d,phase=%s seq=%di,kwh=%d.25,tag=\"%s\" %d"
        % (i % 200, b"L1", i, i * 7, tag.encode(), 1_700_000_000_000_000_000 + i)
        for i in range(start, start + count)
    ]


def delivered(directory: Path) -> set[bytes]:
    out: set[bytes] = set()
    for path in directory.glob("*.lp"):
        out.update(line for line in path.read_bytes().split(b"\n") if line)
    return out


async def poll_until(done: Callable[[], bool], seconds: float = 120) -> None:
    """Hang guard only; the assertion is the condition, not the time."""
    await eventually(done, within=seconds, every=0.05)


def free_space(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


async def test_disk_full_degrades_then_recovers_without_restart(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    fs = mounts.tmpfs("16m")
    # Defaults for everything about space: the default floor (5% of 16 MiB here).
    buffer = AsyncBuffer(Buffer(fs / "data" / "buffer.db", max_bytes=64 * 1024**2,
                                when_full="drop_oldest", chunk_lines=250))
    await buffer.open()
    await buffer.register_sinks(["lines"])
    lines_dir = tmp_path / "lines"  # on another file system: delivery itself works
    config = FileSinkConfig(type="file", name="lines", directory=lines_dir, fsync=False)
    new_data = asyncio.Event()
    stats = GatewayStats()
    forwarder = Forwarder(FileSink(config, tmp_path), config, buffer, new_data, stats)
    task = asyncio.create_task(forwarder.run())
    sink = stats.sink("lines")
    appended: list[bytes] = []
    dropped = 0
    append_failures: list[BufferFailure] = []

    async def feed(tag: str, rounds: int) -> None:
        nonlocal dropped
        for _ in range(rounds):
            batch = readings(tag, len(appended), 500)
            try:
                result = await buffer.append(batch, 1, 2)
            except BufferFailure as exc:
                append_failures.append(exc)
                continue
            appended.extend(batch)
            dropped += result.dropped
            new_data.set()
            await asyncio.sleep(0.01)

    async def lag() -> int:
        return (await buffer.stats()).sinks["lines"].lag_lines

    try:
        with caplog.at_level(logging.INFO):
            await feed("before", 20)
            await poll_until(lambda: len(delivered(lines_dir)) == len(appended))

            filler = fill(fs)
            assert free_space(fs) < 64 * 1024
            await feed("full", 120)
            assert not task.done(), f"the forwarder died on a full disk: {task!r}"
            assert not append_failures, append_failures[:1]
            # Nothing has to be dropped while the sink keeps up: pruning frees pages in the
            # file that new chunks reuse. Whatever was dropped is counted.
            assert (await buffer.stats()).dropped_full_total == dropped
            assert sink.state in ("ok", "retrying")

            filler.unlink()
            mark = len(appended)
            await feed("after", 20)
            after = set(appended[mark:])
            await poll_until(lambda: after <= delivered(lines_dir))
            await eventually(lag, until=lambda held: not held, within=120, every=0.05,
                             what="the cursor recorded again")
            await poll_until(lambda: sink.state == "ok")
            assert not task.done(), f"the forwarder died: {task!r}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Nothing delivered that was never appended; what is missing was counted as dropped.
    got = delivered(lines_dir)
    assert got <= set(appended)
    assert len(set(appended) - got) <= dropped
    # Space came back: the reserve exists again and the floor is no longer in force.
    assert await asyncio.to_thread((fs / "data" / "buffer.db.reserve").exists)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "a full disk must be reported at ERROR"
    assert len({r.getMessage() for r in errors}) <= 3, [r.getMessage() for r in errors]
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    await buffer.close()


def test_drop_newest_below_the_floor_refuses_new_lines(
    mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    fs = mounts.tmpfs("8m")
    buf = Buffer(fs / "buffer.db", max_bytes=64 * 1024**2, when_full="drop_newest",
                 min_free=2 * 1024**2)
    buf.open()
    buf.register_sinks(["s"])
    assert buf.append(readings("x", 0, 100), 1, 2).stored == 100
    with (fs / "filler").open("wb") as f:  # leaves about 1 MiB: below the 2 MiB floor
        f.write(b"\0" * (free_space(fs) - 1024**2))
    with caplog.at_level(logging.WARNING, logger="iotgw.buffer"):
        result = buf.append(readings("x", 100, 100), 1, 2)
    assert (result.stored, result.dropped) == (0, 100)
    # The drop warning names the cause: the free-space floor, not max_bytes (an outside
    # probe found "is full (max 536870912 payload bytes)" on a full disk).
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and f"free space on {fs} is below min_free" in drops[0]
    assert "max_bytes" not in drops[0]
    assert buf.stats().dropped_full_total == 100
    (fs / "filler").unlink()
    assert buf.append(readings("x", 200, 100), 1, 2).stored == 100
    buf.close()


def test_open_on_a_read_only_file_system_fails_clearly(mounts: Mounts) -> None:
    fs = mounts.tmpfs("4m")
    (fs / "data").mkdir()
    mounts.remount(fs, "ro")
    with pytest.raises(BufferFailure, match="read-only"):
        Buffer(fs / "data" / "buffer.db", 16 * 1024**2, "drop_oldest").open()
    with pytest.raises(BufferFailure, match="read-only"):
        Buffer(fs / "new" / "buffer.db", 16 * 1024**2, "drop_oldest").open()


def test_iotgw_run_on_a_read_only_data_dir_exits_with_one_line(
    tmp_path: Path, mounts: Mounts
) -> None:
    fs = mounts.tmpfs("4m")
    mounts.remount(fs, "ro")
    config = tmp_path / "gw.yaml"
    config.write_text(f"gateway: {{id: gw-ro, site: test-site, data_dir: {fs}}}\n"
                      "devices:\n  - {id: d1, driver: synthetic, interval: 1s}\n")
    proc = subprocess.run([sys.executable, "-m", "gateway", "run", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "read-only" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "ERROR" in line]) == 1


async def test_file_system_turning_read_only_while_running(
    tmp_path: Path, mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    fs = mounts.ext4(32)
    buffer = AsyncBuffer(Buffer(fs / "buffer.db", 16 * 1024**2, "drop_oldest"))
    await buffer.open()
    await buffer.register_sinks(["lines"])
    lines_dir = tmp_path / "lines"
    config = FileSinkConfig(type="file", name="lines", directory=lines_dir, fsync=False)
    new_data = asyncio.Event()
    stats = GatewayStats()
    forwarder = Forwarder(FileSink(config, tmp_path), config, buffer, new_data, stats)
    task = asyncio.create_task(forwarder.run())
    try:
        first = readings("rw", 0, 300)
        await buffer.append(first, 1, 2)
        new_data.set()
        await poll_until(lambda: set(first) <= delivered(lines_dir))
        await poll_until(lambda: stats.sink("lines").state == "ok")
        # Committed but not yet delivered when the card fails: delivered from memory of
        # the buffer's pages, the ack cannot be written.
        pending = readings("late", 300, 300)
        await buffer.append(pending, 1, 2)
        with caplog.at_level(logging.ERROR):
            trigger_ext4_error(fs)
            new_data.set()
            await poll_until(lambda: set(pending) <= delivered(lines_dir))
            failures = []
            for n in range(5):
                with pytest.raises(BufferFailure) as caught:
                    await buffer.append(readings("ro", 600 + 10 * n, 10), 1, 2)
                failures.append(caught.value)
            await poll_until(lambda: stats.sink("lines").state == "retrying")
            await asyncio.sleep(2.5)  # a few idle rechecks retry the ack
        assert not task.done(), f"the forwarder died: {task!r}"
        assert all("read-only" in str(exc) and exc.retryable for exc in failures)
        assert "read-only" in (stats.sink("lines").last_error or "")
        ack_errors = [r for r in caplog.records
                      if r.name == "iotgw.forwarder" and r.levelno == logging.ERROR]
        assert len(ack_errors) == 1, [r.getMessage() for r in ack_errors]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await buffer.close()


def test_a_restart_on_a_full_disk_opens_and_keeps_the_backlog(mounts: Mounts) -> None:
    fs = mounts.tmpfs("8m")
    path = fs / "buffer.db"
    buf = Buffer(path, 64 * 1024**2, "drop_oldest", chunk_lines=100)
    buf.open()
    buf.register_sinks(["s"])
    for n in range(20):
        buf.append(readings("old", n * 100, 100), 1, 2)
    buf.close()
    fill(fs)

    again = Buffer(path, 64 * 1024**2, "drop_oldest", chunk_lines=100)
    again.open()
    again.register_sinks(["s"])
    assert again.stats().depth_lines == 2000
    result = again.append(readings("new", 5000, 100), 1, 2)
    assert result.stored == 100 and result.dropped >= 100  # oldest replaced by newest
    batch = again.read("s", 10**6)
    assert batch is not None
    again.ack("s", batch.last_id)  # the write that frees space works on a full disk
    assert again.stats().sinks["s"].lag_lines == 0
    again.close()


def test_sqlite_full_mid_append_gives_back_the_reserve_and_applies_when_full(
    mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    fs = mounts.tmpfs("16m")
    buf = Buffer(fs / "buffer.db", 64 * 1024**2, "drop_oldest", chunk_lines=500,
                 min_free=1024**2)
    buf.open()
    buf.register_sinks(["s"])
    for n in range(30):
        buf.append(readings("old", n * 1000, 1000), 1, 2)
    held = buf.stats().depth_lines
    reserve = fs / "buffer.db.reserve"
    assert reserve.exists()
    # Above the floor, but not enough for the next (large) commit: SQLite hits ENOSPC.
    with (fs / "filler").open("wb") as f:
        f.write(b"\0" * (free_space(fs) - 1024**2 - 128 * 1024))
    with caplog.at_level(logging.INFO, logger="iotgw.buffer"):
        result = buf.append(readings("big", 100_000, 25_000), 1, 2)
    assert result.stored == 25_000 and result.dropped >= 25_000
    # The newest replaced the oldest, a chunk or two more than a byte count would say
    # (whole chunks are evicted; page space is what must fit).
    assert held - 4 * 500 <= buf.stats().depth_lines <= held
    assert buf.stats().dropped_full_total == result.dropped
    assert not reserve.exists()
    full = [r.getMessage() for r in caplog.records
            if "disk is full (SQLITE_FULL)" in r.getMessage()]
    assert len(full) == 1 and r"released the space reserve" in full[0]
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and "is full (SQLITE_FULL)" in drops[0], drops
    assert "max_bytes" not in drops[0]
    (fs / "filler").unlink()
    buf.append(readings("after", 200_000, 10), 1, 2)
    assert reserve.exists()  # re-created once there is room for it again
    buf.close()
