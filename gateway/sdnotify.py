"""The systemd notification protocol (``sd_notify``), spoken directly.

It is one datagram per message on the unix socket named by ``$NOTIFY_SOCKET``; a
dependency (python-systemd, sdnotify) would add a C extension or a package to audit for
ten lines. Messages: ``READY=1`` once started, ``WATCHDOG=1`` at least every
``WatchdogSec`` (systemd kills and restarts the service otherwise), ``STOPPING=1``,
``STATUS=...`` for ``systemctl status``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def _address(environ: Mapping[str, str]) -> str | None:
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):  # abstract namespace
        return "\0" + address[1:]
    return address


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds systemd waits for a WATCHDOG=1 (``WatchdogSec``), None when not enabled.

    ``WATCHDOG_PID`` names the process the watchdog is meant for; a child that inherited
    the environment must not ping for its parent."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        period = int(usec) / 1e6
    except ValueError:
        return None
    return period if period > 0 else None


class Notifier:
    """One datagram socket to systemd; :meth:`send` is a no-op outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._address = _address(os.environ if environ is None else environ)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *messages: str) -> bool:
        """Send ``KEY=value`` lines as one datagram. Raises OSError if systemd is gone."""
        if self._address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self._sock.sendto("\n".join(messages).encode(), self._address)
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
