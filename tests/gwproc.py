"""Run ``iotgw run`` as a real subprocess and read its JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.wait import eventually_sync

ROOT = Path(__file__).resolve().parent.parent


class GatewayProcess:
    """``iotgw run CONFIG --log-format json`` with its log collected in a thread."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.records: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", str(self.config), "--log-format", "json"],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.records.append(json.loads(line))
            except ValueError:
                pass

    def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 30.0) -> dict[str, Any]:
        """Hang guard only: fails the test if the gateway never logs what it must, at once
        if it exits without having logged it."""
        seen = 0

        def probe() -> dict[str, Any] | None:
            nonlocal seen
            exited = self.proc is not None and self.proc.poll() is not None
            if exited and self._reader is not None:
                self._reader.join(5)  # the rest of its log
            records = self.records[seen:]
            seen += len(records)
            found = next((r for r in records if predicate(r)), None)
            if found is None and exited:
                assert self.proc is not None
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n"
                                     + "".join(self.raw[-30:]))
            return found

        return eventually_sync(probe, within=timeout, every=0.05, what=lambda: (
            "expected log line; the last ones:\n" + "".join(self.raw[-30:])))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
            self.proc.kill()
            raise AssertionError("gateway did not stop on SIGTERM:\n"
                                 + "".join(self.raw[-40:])) from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def messages(self) -> list[str]:
        return [str(r.get("msg", "")) for r in self.records]
