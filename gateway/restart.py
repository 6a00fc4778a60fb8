"""Starting the gateway again in place: same process, a fresh interpreter.

Why in place (``os.execv``) and not by exiting for systemd to restart: the PID stays, so
systemd's main process, its notify socket and the watchdog stay with it, and a gateway
run by hand or in a container without a supervisor comes back too. Two things need it:

* OpenSSL, held back at start (gateway/openssl_gate.py), cannot be loaded into a
  process whose asyncio was imported without it.
* Sections a running gateway cannot change (:data:`APPLIED_AT_START`): the MQTT link,
  the HTTP servers, the buses, the buffer and the alarm engine's settings are built
  once at start; a reload used to leave them as they were while logging "config
  reloaded" (an outside probe: a new ``http.listen`` port refused connections, commands
  still ran on the old ``mqtt.base_topic``).

A reload that changes only devices, sinks, rules, privacy or the gateway's site and id
applies them live, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gateway import openssl_gate

if TYPE_CHECKING:
    from gateway.config.loader import LoadedConfig

log = logging.getLogger("iotgw.restart")

APPLIED_AT_START = ("mqtt", "http", "health", "buses", "buffer", "alarms")
"""Top-level config sections whose change takes a restart in place."""


@dataclass(frozen=True)
class Restart:
    """Why a running gateway stopped to start again in place."""

    reasons: tuple[str, ...]
    openssl: bool = False
    """The new image loads OpenSSL (a part needs it)."""
    config_digest: str | None = None
    """The hash of the config the new image will run (a reload's answer)."""

    def message(self) -> str:
        what = ", ".join(self.reasons)
        if self.openssl:
            return (f"{what} need{'s' if len(self.reasons) == 1 else ''} OpenSSL, which this "
                    "process started without: starting again with it (same process)")
        return (f"reload: {what} changed, which a running gateway cannot change: starting "
                "again (same process)")


def changed_at_start(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """The sections of :data:`APPLIED_AT_START` that differ between two configs."""
    changed = [name for name in APPLIED_AT_START
               if getattr(old.model, name) != getattr(new.model, name)]
    if new.buffer_path != old.buffer_path and "buffer" not in changed:
        changed.append("buffer")  # data_dir moved
    return changed


def start_again(restart: Restart) -> NoReturn:
    """Execute this gateway again, in place (does not return).

    Same PID, same interpreter options and arguments. With ``restart.openssl`` the new
    image runs with ``IOTGW_OPENSSL=1``; otherwise the environment is left as it is (a
    process that had OpenSSL keeps it). SIGHUP is ignored across the exec (an ignored
    signal stays ignored in the new image): the new image reads the config file anew,
    so a reload request in between is covered, and it cannot end the process while the
    interpreter starts."""
    log.info("%s", restart.message())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if restart.openssl:
        os.environ[openssl_gate.ENV] = "1"
    os.execv(sys.executable, sys.orig_argv)


CHECK_TIMEOUT = 120.0


async def check_with_openssl(path: Path) -> list[str]:
    """The problems of the config at ``path`` as ``iotgw check`` finds them in a child
    process that has OpenSSL (empty: valid).

    For a reload whose loading imported OpenSSL in a process without it (an installed
    plugin module imports ``ssl``; a misspelt driver name makes the loader import every
    plugin): this process cannot finish validating, and restarting on an invalid file
    ended the gateway at the new image's start (exit 2) where a reload must reject it
    and keep running (an outside probe)."""
    env = {**os.environ, openssl_gate.ENV: "1"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "check", str(path), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            _, err = await child.communicate()
    except TimeoutError:
        child.kill()
        await child.wait()
        return [f"iotgw check {path} did not finish within {CHECK_TIMEOUT:g} s"]
    if child.returncode == 0:
        return []
    lines = err.decode("utf-8", "replace").splitlines()
    problems = [line for line in lines if line and not line.endswith("nothing was started.")]
    return problems or [f"iotgw check {path} failed (exit {child.returncode})"]


def for_openssl(reasons: Sequence[str], config: LoadedConfig | None = None) -> Restart:
    return Restart(tuple(reasons), openssl=True,
                   config_digest=config.digest if config is not None else None)


def openssl_needed(config: LoadedConfig) -> Restart | None:
    """The restart ``config`` takes in a process that holds OpenSSL back and has a part
    that needs it (at start and at a reload alike), else None."""
    needing = openssl_gate.users(config) if openssl_gate.held_back() else []
    return for_openssl(needing, config) if needing else None
