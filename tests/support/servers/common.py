"""Shared by the test servers: free loopback ports, HTTP without proxies, and the
child-process lifecycle (spawn, poll until ready, stop, kill, pause, restart).

Only the standard library is used here, so a broken gateway dependency can never make the
harness itself lie about what the servers received.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

LOOPBACK = "127.0.0.1"

# urllib would otherwise honour http_proxy & co. and send loopback traffic elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_handed_out: set[int] = set()
_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


class ServerError(RuntimeError):
    """A test server failed to start, died, or answered an HTTP error."""


def free_port() -> int:
    """A loopback port the kernel just reported free, never the same one twice per process.

    There is an unavoidable race with other processes; servers retry their first start on
    fresh ports when the log says the address was taken.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ServerError("no free loopback port found")


def binary(*candidates: str) -> str:
    """Absolute path of the first installed candidate: fail loudly, never skip silently."""
    for candidate in candidates:
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
        found = shutil.which(candidate)
        if found:
            return found
    raise ServerError(f"none of {candidates} is installed (run deploy/bootstrap.sh)")


def http_request(
    method: str,
    url: str,
    *,
    params: Mapping[str, str | Sequence[str]] | None = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP error statuses are returned, not raised."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(params, doseq=True)}"
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` in state T (stopped), from /proc/<pid>/task/*/stat."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that exited meanwhile
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def check_ok(status: int, body: bytes, what: str) -> bytes:
    if status >= 300:
        raise ServerError(f"{what}: HTTP {status}: {body.decode(errors='replace')[:2000]}")
    return body


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


@atexit.register
def _kill_leftovers() -> None:
    """Last-resort cleanup so an aborted session does not leave servers behind."""
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.kill()


class ServerProcess:
    """Lifecycle shared by all servers: spawn, poll until ready, stop, restart.

    Ports and data dir are fixed at construction, so stop() + start() brings the same
    server back on the same port with the same data, as a restarted real server would.
    """

    name = "server"
    ready_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, base_dir: str | os.PathLike[str], ports: Sequence[int | None]) -> None:
        base = Path(base_dir)
        base.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=base))
        self.log_path = self.dir / f"{self.name}.log"
        self._auto_ports = all(p is None for p in ports)
        self._ports = [p if p is not None else free_port() for p in ports]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._log_offset = 0  # where the current run's output starts in the log
        self._ever_ready = False

    # --- subclass hooks -----------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files; runs before every spawn so new ports are picked up."""

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _after_ready(self) -> None:
        """One-off setup that needs the server up (e.g. creating an admin user)."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> Self:
        """Spawn and wait until ready; raise with the log tail if it dies or stalls."""
        if self.running:
            return self
        deadline = time.monotonic() + self.ready_timeout
        while True:
            self._prepare()
            self._spawn()
            failure = self._wait_ready(deadline)
            if failure is None:
                break
            in_use = "address already in use" in self._run_log().lower()
            if in_use and time.monotonic() < deadline:
                if self._auto_ports and not self._ever_ready:
                    self._ports = [free_port() for _ in self._ports]
                else:  # restart on a fixed port: wait for the old socket to go away
                    time.sleep(0.1)
                continue
            raise ServerError(f"{self.name} {failure}\n--- {self.log_path} (tail) ---\n"
                              f"{self.log_tail()}")
        if not self._ever_ready:
            self._ever_ready = True
            self._after_ready()
        return self

    def _spawn(self) -> None:
        self._close_log()
        self._log_file = open(self.log_path, "ab")  # kept open: the child writes to it
        self._log_file.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
        self._log_file.flush()
        self._log_offset = self._log_file.tell()
        self.proc = subprocess.Popen(
            self._command(),
            cwd=self.dir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a ^C in pytest must not kill it before teardown
        )
        _live.add(self)

    def _wait_ready(self, deadline: float) -> str | None:
        """None when ready, else why not (the process is then gone)."""
        assert self.proc is not None
        while True:
            code = self.proc.poll()
            if code is not None:
                self._close_log()
                return f"exited with code {code} during startup: {self.log_tail(5)}"
            try:
                if self._is_ready():
                    return None
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                return f"not ready after {self.ready_timeout:.0f}s"
            time.sleep(0.02)

    def stop(self, timeout: float | None = None) -> int | None:
        """Graceful stop (SIGTERM, so data is flushed), SIGKILL if it hangs; exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # in case a test paused it
                self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: simulate a crash (nothing flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self._close_log()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server).

        Returns once every thread of the server is stopped: the kernel stops each thread
        when it next runs, and on a loaded machine a thread of a multi-threaded server
        (VictoriaMetrics is Go) answered one more request after kill() had returned."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 10
            while not _all_threads_stopped(self.proc.pid):
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.name}: threads still running 10 s after SIGSTOP")
                time.sleep(0.005)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        """Graceful stop then start on the same port(s) and data dir."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _run_log(self) -> str:
        """What the current (or last) process wrote, without earlier runs."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} ports={self._ports} {state} dir={self.dir}>"
