"""Buffer, WAL, shm, reserve and line files are 0600, directories the gateway makes 0700,
whatever the umask (outside systemd nothing else guarantees it)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.buffer import Buffer
from gateway.sinks.file import FileSink, FileSinkConfig


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_buffer_files_and_directories_are_private(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "data"
    buf = Buffer(data / "state" / "buffer.db", 16 * 1024**2, "drop_oldest")
    buf.open()
    buf.register_sinks(["s"])
    buf.append([b"m v=1i"] * 10, 1, 2)
    files = ["buffer.db", "buffer.db-wal", "buffer.db-shm"]
    modes = {name: mode(data / "state" / name) for name in files}
    buf.close()
    assert modes == dict.fromkeys(files, 0o600)
    assert (mode(data), mode(data / "state")) == (0o700, 0o700)
    assert mode(data / "state" / "buffer.db.reserve") == 0o600


def test_an_existing_directory_is_left_alone_but_old_buffer_files_are_tightened(
    tmp_path: Path, umask: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o750)  # what deploy/iotgw.service's StateDirectoryMode makes
    Buffer(data / "buffer.db", 16 * 1024**2, "drop_oldest").open()
    os.chmod(data / "buffer.db", 0o644)  # written by an older gateway under umask 022
    buf = Buffer(data / "buffer.db", 16 * 1024**2, "drop_oldest")
    buf.open()
    buf.close()
    assert mode(data) == 0o750
    assert mode(data / "buffer.db") == 0o600


async def test_file_sink_lines_are_private(tmp_path: Path, umask: int) -> None:
    config = FileSinkConfig(type="file", directory=tmp_path / "out" / "lines",
                            max_file_size=64, fsync=False)
    sink = FileSink(config, tmp_path)
    await sink.open()
    for n in range(4):  # 40-byte batches into 64-byte files: rotates
        await sink.write(b"m,n=%d v=1i 1700000000000000000" % n + b"." * 3)
    files = sorted((tmp_path / "out" / "lines").iterdir())
    assert len(files) >= 3 and any(p.name.startswith("lines-") for p in files)
    assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert mode(tmp_path / "out") == 0o700
    assert mode(tmp_path / "out" / "lines") == 0o700
