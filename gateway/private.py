"""Files 0600 and directories 0700 for what the gateway creates, whatever the umask.

Buffered readings carry pseudonymised card numbers, plates and meter data; outside systemd
(whose ``UMask=`` would cover it) a shell's umask 0022 made them world-readable. The mode
is passed at creation and set again with ``chmod``, because the umask only ever removes
bits and a umask of 0 must not widen anything either. Directories that already exist are
left as they are: an installer that made ``data_dir`` 0750 for an operators' group chose
that on purpose (docs/operations.md, section 2).
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents with mode 0700; leave existing ones alone."""
    missing: list[Path] = []
    current = Path(path)
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # created meanwhile by someone else: theirs, not ours to change
        os.chmod(directory, DIR_MODE)
    if not Path(path).is_dir():
        raise NotADirectoryError(f"{path} is not a directory")


def open_private(path: Path, flags: int) -> int:
    """``os.open`` creating with mode 0600; an existing file of ours is tightened too.

    Only for the gateway's own files (buffer, file sink lines), never for a user's file.
    """
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        mode = os.fstat(fd).st_mode & 0o7777
        if mode & 0o077 or mode & 0o600 != 0o600:
            os.fchmod(fd, (mode & 0o700) | 0o600)
    except OSError:
        os.close(fd)
        raise
    return fd


def tighten(path: Path) -> bool:
    """Remove group/other bits from an existing file of ours; True if it changed.

    A buffer written by an older gateway under umask 0022 is 0644; it holds the same
    readings as a new one, so it gets the same protection.
    """
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return False
    if mode & 0o077 == 0:
        return False
    os.chmod(path, mode & 0o700)
    return True
