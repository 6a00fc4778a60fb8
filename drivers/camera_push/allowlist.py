"""The installer's list of plates that open the barrier, kept only as keyed hashes.

The file holds one plate per line (``#`` comments and blank lines ignored), or
``pseudonym:<hex>`` lines with plates already hashed by the compound's privacy key (so
a list made centrally need not carry raw plates). Plates are hashed with the same
keyed hash the pipeline applies to a pseudonymised ``plate`` field
(:mod:`gateway.pseudonym`), and only the hashes are kept in memory. The file is re-read
when its modification time or size changes (checked at most once a second), so the
gatehouse edits it without a restart. Deleting the file revokes every plate (an empty
list, one WARNING); a file that exists but cannot be read keeps the last good list (one
WARNING), so a half-written or briefly unreadable file neither opens nor shuts every
gate. Without a privacy key the hashes use a key made for this run, and ``pseudonym:``
lines cannot match (logged).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.problems import ProblemLog

log = logging.getLogger("iotgw.camera_push")
MAX_BYTES = 4 * 1024**2
CHECK_EVERY = 1.0
MISSING = (-1, -1)
"""The stamp of a list whose file does not exist (no real file has it)."""


def normalise(plate: str) -> str:
    """Cameras differ in case and spacing; the gatehouse types ``粤b 12345``."""
    return "".join(plate.split()).upper()


class AllowList:
    def __init__(self, path: Path, hash_plate: Callable[[str], str], keyed: bool) -> None:
        self.path = path
        self._hash = hash_plate
        self._keyed = keyed
        self._hashes: frozenset[str] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._problems = ProblemLog(log)
        self.reload()

    def opens(self, plate: str) -> bool:
        if time.monotonic() - self._checked >= CHECK_EVERY:
            self.reload()
        return self._hash(normalise(plate)) in self._hashes

    def reload(self) -> None:
        self._checked = time.monotonic()
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._missing()
            return
        except OSError as exc:
            self._unreadable(exc)
            return
        if self._stamp == MISSING:
            self._problems.recovered("missing", f"plate list {self.path} is back")
        try:
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            if stat.st_size > MAX_BYTES:
                raise OSError(f"larger than {MAX_BYTES // 1024**2} MiB")
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:  # removed between the stat and the read
            self._missing()
            return
        except (OSError, UnicodeDecodeError) as exc:
            self._unreadable(exc)
            return
        hashes = set()
        prehashed = 0
        for line in text.splitlines():
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            if entry.lower().startswith("pseudonym:"):
                prehashed += 1
                hashes.add(entry.split(":", 1)[1].strip().lower())
            else:
                hashes.add(self._hash(normalise(entry)))
        if prehashed and not self._keyed:
            self._problems.report("unkeyed", f"plate list {self.path}: {prehashed} pseudonym: "
                                  "lines cannot match without privacy.key_file",
                                  level=logging.WARNING)
        self._hashes = frozenset(hashes)
        self._stamp = stamp
        self._problems.recovered("read", f"plate list {self.path} readable again")
        log.info("plate list %s: %d plates", self.path, len(self._hashes))

    def _missing(self) -> None:
        """No file: the operator deleted the list, which revokes every plate (keeping the
        old plates would keep opening the barrier for them)."""
        if self._stamp != MISSING:
            self._problems.report("missing", f"plate list {self.path} does not exist: no "
                                  "plate opens the barrier until it does "
                                  f"({len(self._hashes)} plates dropped)", level=logging.WARNING)
        self._hashes = frozenset()
        self._stamp = MISSING

    def _unreadable(self, exc: BaseException) -> None:
        """A file that is there but cannot be read (permissions, half-written, not UTF-8,
        too large): keep the last good list, a passing fault must not shut every gate."""
        self._problems.report("read", f"plate list {self.path}: cannot read it ({exc}); "
                              f"keeping the {len(self._hashes)} plates read before",
                              level=logging.WARNING)

    def __len__(self) -> int:
        return len(self._hashes)
