"""Pictures from posts kept in a bounded folder: one sub-folder per device, files mode
0600 (faces and plates are personal data), the oldest removed once the total passes
``max_bytes``. Off unless the ``http.images`` section asks for it; the time-series only
ever gets a picture's count and size.

Writes are small (about 100 kB) and happen in a worker thread so a slow SD card does
not hold the event loop; the total is tracked in memory after one scan at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from drivers.camera_push.payload import Image

log = logging.getLogger("iotgw.camera_push")


class ImageStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: deque[tuple[Path, int]] = deque()
        self._total = 0
        self._sequence = 0
        self._scanned = False

    def _scan(self) -> None:
        """The files already there, oldest first (a restart keeps the cap)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        found = []
        for path in self.root.glob("*/*"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime_ns, path, stat.st_size))
        for _, path, size in sorted(found):
            self._files.append((path, size))
            self._total += size
        self._scanned = True

    async def save(self, device_id: str, time_ns: int, images: list[Image]) -> None:
        if images:
            await asyncio.to_thread(self._save, device_id, time_ns, images)

    def _save(self, device_id: str, time_ns: int, images: list[Image]) -> None:
        with self._lock:
            if not self._scanned:
                self._scan()
            folder = self.root / device_id
            folder.mkdir(exist_ok=True, mode=0o700)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time_ns / 1e9))
            for image in images:
                self._sequence += 1
                path = folder / f"{stamp}-{self._sequence:06d}-{image.name}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(image.data)
                self._files.append((path, len(image.data)))
                self._total += len(image.data)
            while self._total > self.max_bytes and self._files:
                path, size = self._files.popleft()
                self._total -= size
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass

    @property
    def total(self) -> int:
        return self._total
