"""Free space on the buffer's file system: a floor that counts as full, and a reserve file.

Why a floor
    ``buffer.max_bytes`` caps the payload the buffer holds, not the disk: logs, the file
    sink, a core dump or another program can fill the file system first. SQLite then fails
    every write with ``SQLITE_FULL``, including the acknowledgement that would let it prune,
    so nothing ever frees space. Treating "free space below ``min_free``" as "buffer full"
    applies ``when_full`` while SQLite can still write, so acks and prunes keep working.

Why a reserve file
    The floor only helps if the gateway notices in time; another program can take the last
    byte between two checks. ``<buffer>.reserve`` (a few MiB of allocated blocks, created
    at open) is given back to the file system the moment SQLite reports ``SQLITE_FULL``, so
    the ack, prune and checkpoint that make room can run. It is re-created once free space
    is above the floor plus its own size again.

Both checks are one ``statvfs`` per commit, not per line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from gateway.private import open_private

log = logging.getLogger("iotgw.buffer")

DEFAULT_MIN_FREE = 64 * 1024**2
DEFAULT_MIN_FREE_FRACTION = 0.05
"""The default floor is 64 MiB, but at most 5% of the file system (small cards, tests)."""
RESERVE_MAX = 4 * 1024**2


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer can still use in ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def is_read_only(directory: Path) -> bool:
    """True if ``directory`` is on a file system that refuses writes as read-only.

    ``statvfs`` shows a read-only mount, but not ext4's ``emergency_ro`` (what the kernel
    sets after I/O errors on a failing card: still "rw" in the mount table, every write
    EROFS), so a tiny probe file is created too. Only called at open and on errors.
    """
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    probe = Path(directory) / ".iotgw-write-probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    except OSError as exc:
        return exc.errno == errno.EROFS
    with contextlib.suppress(OSError):
        probe.unlink()
    return False


def default_min_free(directory: Path) -> int:
    st = os.statvfs(directory)
    return min(DEFAULT_MIN_FREE, int(st.f_blocks * st.f_frsize * DEFAULT_MIN_FREE_FRACTION))


class DiskGuard:
    """The free-space floor and the reserve file of one buffer."""

    def __init__(self, buffer_path: Path, min_free: int | None) -> None:
        self.directory = buffer_path.parent
        self.reserve_path = buffer_path.with_name(f"{buffer_path.name}.reserve")
        self._min_free = min_free
        self.min_free = 0
        self.reserve_bytes = 0
        self.low = False
        """Free space was below the floor at the last check."""

    def start(self) -> None:
        """Resolve the default floor and create the reserve (if there is room for it)."""
        self.min_free = (
            default_min_free(self.directory) if self._min_free is None else self._min_free
        )
        self.reserve_bytes = min(RESERVE_MAX, self.min_free // 2)
        self.restore_reserve()

    def check(self, reusable: int = 0) -> bool:
        """Whether free space (plus ``reusable`` bytes free inside the database file) is below
        the floor; re-creates a released reserve when there is room again."""
        try:
            free = free_bytes(self.directory)
        except OSError:
            return self.low
        if not self.reserve_present() and free >= self.min_free + self.reserve_bytes:
            self.restore_reserve()
            free = free_bytes(self.directory)
        # Leaving "low" takes a margin (the reserve's size): pruning frees pages inside the
        # file a few at a time, and the state must not flap on every commit.
        floor = self.min_free + (self.reserve_bytes if self.low else 0)
        self.low = free + reusable < floor
        return self.low

    def reserve_present(self) -> bool:
        return self.reserve_bytes == 0 or self.reserve_path.exists()

    def release_reserve(self) -> bool:
        """Give the reserve's blocks back to the file system; True if there was one."""
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.error("buffer: cannot delete the space reserve %s: %s", self.reserve_path, exc)
            return False
        return True

    def restore_reserve(self) -> bool:
        """Create the reserve with real blocks (not a sparse file); True if it exists now."""
        if self.reserve_present():
            return True
        partial = self.reserve_path.with_name(self.reserve_path.name + ".new")
        try:
            fd = open_private(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                _allocate(fd, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, self.reserve_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
                log.warning("buffer: cannot create the space reserve %s: %s",
                            self.reserve_path, exc)
            return False
        return True


def _allocate(fd: int, size: int) -> None:
    """Real blocks for ``size`` bytes: ``posix_fallocate``, or zeros where unsupported."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    block = bytes(64 * 1024)
    written = 0
    while written < size:
        written += os.write(fd, block[: size - written])
