"""One gateway per buffer: an exclusive lock held for the process's lifetime.

Two ``iotgw run`` on one config (a unit started twice, a manual run beside the service)
used to both start: two writers on one buffer, two file sinks rotating each other's files,
duplicated lines. The lock is ``flock`` on ``<buffer>.lock``: the kernel releases it when
the process dies, even on kill -9, so a stale lock never keeps a gateway from starting.
``iotgw buffer stats`` reads without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.errors import BufferFailure
from gateway.private import make_dirs, open_private


@contextlib.contextmanager
def instance_lock(buffer_path: Path) -> Iterator[Path | None]:
    lock_path = buffer_path.with_name(buffer_path.name + ".lock")
    try:
        make_dirs(lock_path.parent)
        fd = open_private(lock_path, os.O_RDWR | os.O_CREAT)
    except OSError:
        # A read-only or unusable data_dir: the buffer's own open says precisely why.
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BufferFailure(f"another iotgw (pid {holder}) is running on the buffer "
                                f"{buffer_path}: one gateway per data_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)
