"""Small real file systems for resource-exhaustion tests: tmpfs and a loop-mounted ext4.

Both need root (``mount``) and e2fsprogs, which CI and the bootstrap have: without them
the tests fail and say what is missing, rather than skip the disk-full guarantees.
Everything mounted is unmounted again by the fixture that made it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


class Mounts:
    """Mounts made by one test; :meth:`unmount_all` undoes them."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._mounted: list[Path] = []

    def _target(self, name: str) -> Path:
        target = self._base / name
        target.mkdir()
        return target

    def tmpfs(self, size: str, name: str = "fs") -> Path:
        target = self._target(name)
        proc = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target))
        if proc.returncode:
            pytest.fail(f"mount -t tmpfs is not available here: {proc.stderr.strip()}")
        self._mounted.append(target)
        return target

    def ext4(self, size_mib: int, name: str = "ext4") -> Path:
        """A loop-mounted ext4 with ``errors=remount-ro``, as on an SD card."""
        if shutil.which("mkfs.ext4") is None:
            pytest.fail("mkfs.ext4 is not installed")
        image = self._base / f"{name}.img"
        with image.open("wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        proc = _run("mkfs.ext4", "-q", "-F", str(image))
        if proc.returncode:
            pytest.fail(f"mkfs.ext4 failed: {proc.stderr.strip()}")
        target = self._target(name)
        proc = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(target))
        if proc.returncode:
            pytest.fail(f"mount -o loop (ext4) is not available here: {proc.stderr.strip()}")
        self._mounted.append(target)
        return target

    def remount(self, target: Path, option: str) -> None:
        proc = _run("mount", "-o", f"remount,{option}", str(target))
        assert proc.returncode == 0, proc.stderr

    def unmount_all(self) -> None:
        for target in reversed(self._mounted):
            if _run("umount", str(target)).returncode:
                _run("umount", "-l", str(target))
        self._mounted.clear()


@contextlib.contextmanager
def frozen(target: Path) -> Iterator[None]:
    """``fsfreeze``: every write and fsync on ``target`` blocks until thawed, as on a
    stalled disk. Always thawed again, so the fixture can unmount."""
    proc = _run("fsfreeze", "-f", str(target))
    if proc.returncode:
        pytest.fail(f"fsfreeze is not available here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        _run("fsfreeze", "-u", str(target))


def trigger_ext4_error(target: Path) -> None:
    """Make the kernel treat ``target``'s ext4 as failing: with ``errors=remount-ro`` it
    turns read-only underneath open files, as after I/O errors on a worn SD card."""
    source = _run("findmnt", "-no", "SOURCE", str(target)).stdout.strip()
    knob = Path("/sys/fs/ext4") / os.path.basename(source) / "trigger_fs_error"
    if not knob.exists():
        pytest.skip(f"{knob} is missing (kernel without ext4 error injection)")
    knob.write_text("iotgw test: simulated I/O error\n")


def fill(directory: Path) -> Path:
    """Write a filler file until the file system says ENOSPC; returns its path."""
    filler = directory / "filler"
    block = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # The partial last block may leave a few bytes; take those too.
    with contextlib.suppress(OSError), filler.open("ab", buffering=0) as f:
        while True:
            f.write(b"\0" * 512)
    return filler


def mounted(tmp_path: Path) -> Iterator[Mounts]:
    """Body of a ``mounts`` fixture: ``yield from mounted(tmp_path)``."""
    made = Mounts(tmp_path)
    try:
        yield made
    finally:
        made.unmount_all()
