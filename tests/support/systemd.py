"""A stand-in for systemd's notify socket (``$NOTIFY_SOCKET``)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tests.support.wait import eventually_sync


class NotifySocket:
    """A unix datagram socket standing in for systemd: records every message with its
    arrival time (monotonic)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, key: str) -> list[float]:
        return [t for t, m in self.messages if key in m.split("\n")]

    def wait_for(self, key: str, timeout: float = 20.0) -> float:
        found = eventually_sync(lambda: self.times(key), within=timeout, every=0.02,
                                what=lambda: f"{key} from the gateway; got {self.messages}")
        return found[0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
