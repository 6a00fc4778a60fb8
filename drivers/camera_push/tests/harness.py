"""A real gateway (config loader, pipeline, SQLite buffer, file sink, supervisor, this
driver) running in a thread with its own event loop, so tests can post to it from
blocking sockets, hypothesis, or simulators on another loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway.config.loader import load_config
from gateway.driver import DeviceStatus
from gateway.plugin import DeadLetter
from gateway.runtime import Gateway
from tests.support.files import file_lines
from tests.support.servers import free_port
from tests.support.wait import eventually_sync

T = TypeVar("T")
KEY = "k" * 32

ISSUE_EXAMPLE = """\
http:
  listen: 127.0.0.1:8088          # the compound LAN interface in production
  max_body: 4MiB
devices:
  - id: gate-cam-1
    driver: camera_push
    profile: vzenith-plate          # AlarmInfoPlate JSON
    token: "s3cret-token"           # the device posts to /push/gate-cam-1/s3cret-token
    sources: [127.0.0.1]            # source addresses allowed to post
    pseudonymize: [plate]
  - id: lobby-terminal
    driver: camera_push
    profile: hikvision-isapi        # EventNotificationAlert: XML, JSON or multipart
    token: "t2"
"""

HEADER = """\
gateway: {{id: gw-push, site: push-site, data_dir: data}}
buffer: {{flush_interval: 50ms}}
sinks: [{{type: file, name: local}}]
privacy: {{key_file: {key}}}
"""


def config_text(tmp_path: Path, body: str) -> tuple[Path, int]:
    """``body`` (YAML with PORT where the receiver's port goes) under a test header."""
    key = tmp_path / "privacy.key"
    key.write_text(KEY)
    port = free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER.format(key=key) + body.replace("PORT", str(port)))
    return path, port


class GatewayThread:
    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.gateway = Gateway(load_config(config))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.dead: list[DeadLetter] = []
        self.states: list[tuple[str, str, str | None]] = []
        self.gateway.add_dead_letter_listener(self.dead.append)
        self.gateway.add_state_listener(self._state)
        self.error: BaseException | None = None

    def _state(self, device_id: str, status: DeviceStatus) -> None:
        self.states.append((device_id, status.state.value, status.last_error))

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.gateway.run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + 30  # hang guard only
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if not self.thread.is_alive():
                    raise AssertionError(f"gateway stopped: {self.error!r}") from self.error
                time.sleep(0.05)
        raise AssertionError("the push receiver never listened")

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.gateway.request_stop)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "gateway did not stop"
        assert self.error is None, repr(self.error)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a client coroutine on a loop of the test's own (not the gateway's)."""
        return asyncio.run(coro)

    def counters(self, device_id: str) -> dict[str, int]:
        return dict(self.gateway.devices[device_id].status.counters)

    def state(self, device_id: str) -> str:
        return self.gateway.devices[device_id].status.state.value

    def lines(self, prefix: bytes = b"") -> list[bytes]:
        return [line for line in file_lines(self.config.parent / "data")
                if line.startswith(prefix)]

    def committed(self) -> int:
        return self.gateway.stats.readings_committed


def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    """Hang guard only: fails the test if ``predicate`` never holds."""
    eventually_sync(predicate, within=timeout, every=0.02, what=what)
