"""The file sink on a small real file system (tmpfs): a full disk gives up the oldest
rotated file, never new readings and never ``current.lp``.

An outside probe ran the default deployment (the sink in ``<data_dir>/lines`` on the
buffer's own 8 MiB disk, ``max_file_size`` x (``max_files`` + 1) larger than the disk):
once the disk filled the sink retried for ever, ``sent`` froze and the buffer evicted
every new reading. Real ENOSPC from a real tmpfs, as in tests/test_buffer_disk.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import summarize
from gateway.config.loader import load_config
from gateway.errors import SinkUnavailable
from gateway.sinks.file import FileSink, FileSinkConfig
from tests.smallfs import Mounts, fill, mounted


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    yield from mounted(tmp_path)


def batch(i: int) -> bytes:
    """~8 KiB of unique lines: batch ``i`` is recognisable wherever it ends up."""
    return b"\n".join(b"m,batch=%06d,line=%03d v=%di %d" % (i, j, j, i * 1000 + j)
                      for j in range(256))


def sink_on(directory: Path, **settings: object) -> FileSink:
    config = FileSinkConfig(type="file", name="lines", directory=directory, fsync=False,
                            **settings)
    return FileSink(config, directory.parent)


def kept_batches(sink: FileSink) -> list[int]:
    files = [*sink.rotated_files(), sink.directory / "current.lp"]
    text = b"".join(p.read_bytes() for p in files)
    seen: list[int] = []
    for line in text.splitlines():
        number = int(line.split(b",")[1].split(b"=")[1])
        if not seen or seen[-1] != number:
            seen.append(number)
    return seen


async def test_full_disk_gives_up_the_oldest_rotated_files_and_keeps_writing(
        mounts: Mounts, caplog: pytest.LogCaptureFixture) -> None:
    fs = mounts.tmpfs("4m")
    # A ring of 101 x 256 KiB on a 4 MiB disk, as the probe's 11 x 1 MiB on 8 MiB.
    sink = sink_on(fs / "lines", max_file_size="256KiB", max_files=100)
    await sink.open()
    written = 0
    caplog.set_level(logging.WARNING, "iotgw.sinks.file")
    while sink.bytes_given_up < 8 * 1024**2:  # the disk's worth twice over
        await sink.write(batch(written))  # never SinkUnavailable: the ring makes room
        written += 1

    kept = kept_batches(sink)
    assert kept == list(range(kept[0], written)), "a contiguous run up to the newest"
    assert kept[0] > 0 and sink.files_given_up > 0
    given_up = [r for r in caplog.records if "deleted the oldest rotated file" in r.message]
    assert len(given_up) == 1, "once, then counted"
    assert given_up[0].levelno == logging.WARNING
    assert "lines-" in given_up[0].message and "bytes of lines" in given_up[0].message


async def test_full_disk_without_rotated_files_fails_and_keeps_current(
        mounts: Mounts) -> None:
    fs = mounts.tmpfs("1m")
    sink = sink_on(fs / "lines", max_file_size="64MiB", max_files=10)
    await sink.open()
    await sink.write(b"m v=1 1")
    filler = fill(fs)
    with pytest.raises(SinkUnavailable, match="No space left"):
        await sink.write(batch(1))
    assert (fs / "lines" / "current.lp").read_bytes() == b"m v=1 1\n"
    assert sink.files_given_up == 0
    filler.unlink()  # the disk was freed: the same sink writes again
    await sink.write(b"m v=2 2")
    assert (fs / "lines" / "current.lp").read_bytes() == b"m v=1 1\nm v=2 2\n"


def test_check_warns_when_the_ring_is_larger_than_its_file_system(
        tmp_path: Path, mounts: Mounts) -> None:
    fs = mounts.tmpfs("8m")
    config = tmp_path / "gw.yaml"
    config.write_text(f"gateway: {{id: gw, site: s, data_dir: {fs}}}\n"
                      "sinks: [{type: file, name: lines, max_file_size: 1MiB, max_files: 10},"
                      " {type: file, name: small, directory: other, max_file_size: 1MiB,"
                      " max_files: 2}]\n")
    text = summarize(load_config(config))
    warnings = [line for line in text.splitlines() if "warning:" in line]
    assert len(warnings) == 1, text
    assert "'lines'" in warnings[0] and "11534336 bytes" in warnings[0]
    assert str(fs / "lines") in warnings[0]
