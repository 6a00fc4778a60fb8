"""systemd integration: READY=1 once started, WATCHDOG=1 while the loop is healthy.

The ping is sent from a task on the event loop, and only when the loop monitor says the
loop is turning in time: a loop stuck in a blocking call sends nothing, and systemd
(``WatchdogSec=``) kills and restarts the service. Only the loop gates the ping, not the
buffer or the sinks: a watchdog kill is SIGABRT, which loses the readings still queued in
memory, and restarting cannot fix a full disk or a store that is down.

``STOPPING=1`` goes out when the task is cancelled, at the end of the gateway's orderly
shutdown (systemd already knows: it sent the SIGTERM), and ``RELOADING=1`` instead when
the gateway stops to start again in place (gateway/restart.py): after
STOPPING=1 systemd would wait for the process to exit and kill it at TimeoutStopSec,
while RELOADING=1 followed by the new image's READY=1 is a reload to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from gateway.health.monitor import LoopMonitor
from gateway.sdnotify import Notifier, watchdog_period

log = logging.getLogger("iotgw.systemd")

STATUS_INTERVAL = 10.0


def status_line(gateway: Any) -> str:
    stats = gateway.stats
    devices = gateway.devices.values()
    online = sum(1 for d in devices if str(d.status.state) == "online")
    return (f"{online}/{len(gateway.devices)} devices online, {stats.readings_committed} "
            f"readings committed")


async def notify_forever(gateway: Any, monitor: LoopMonitor, notifier: Notifier,
                         period: float | None) -> None:
    """``period`` is WatchdogSec in seconds (None: no watchdog, READY/STATUS only)."""
    try:
        _send(notifier, "READY=1", f"STATUS={status_line(gateway)}", f"MAINPID={os.getpid()}")
        log.info("told systemd READY=1%s", f"; watchdog ping every {period / 2:g}s"
                 if period else "")
        tick = period / 2 if period else STATUS_INTERVAL
        withheld = False
        while True:
            await asyncio.sleep(tick)
            messages = [f"STATUS={status_line(gateway)}"]
            if period:
                if monitor.loop_ok():
                    messages.append("WATCHDOG=1")
                    if withheld:
                        log.warning("event loop healthy again: watchdog pings resumed")
                    withheld = False
                elif not withheld:
                    withheld = True
                    log.error("event loop lag %.1fs over %.1fs: withholding the systemd "
                              "watchdog ping", monitor.current_lag(), monitor.max_lag)
            _send(notifier, *messages)
    except asyncio.CancelledError:
        if gateway.pending_restart is not None:
            _send(notifier, "RELOADING=1", "STATUS=starting again in place")
        else:
            _send(notifier, "STOPPING=1", "STATUS=stopping")
        notifier.close()
        raise


def _send(notifier: Notifier, *messages: str) -> None:
    try:
        notifier.send(*messages)
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


def watchdog_runner(gateway: Any, monitor: LoopMonitor) -> Any:
    notifier = Notifier()
    if not notifier.enabled:
        return None
    period = watchdog_period()
    return lambda: notify_forever(gateway, monitor, notifier, period)
