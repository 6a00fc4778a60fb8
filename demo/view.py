"""The demo's live terminal view: plain ANSI redraws, no dependency.

Last values come from ``Gateway.pipeline.add_listener`` (the readings as the pipeline
accepted them: tagged, card numbers already pseudonymised); states and counters from the
device contexts; buffer depth and per-sink lag from ``gateway.buffer.stats()``; alarms from
``Gateway.alarms``. Pressing ``a`` acknowledges every unacknowledged alarm (as the operator
"demo view", the same command ``cmd/alarm`` runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.alarms.model import (
    UNACKED_STATES,
    AlarmAction,
    AlarmCommand,
    AlarmCommandRefused,
)
from gateway.reading import Reading

log = logging.getLogger("iotgw.demo")

CLEAR = "\x1b[H\x1b[2J"
BOLD, DIM, RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"
STATE_COLOUR = {"online": "\x1b[32m", "offline": "\x1b[31m", "degraded": "\x1b[33m"}
ALARM_COLOUR = {"active_unacked": "\x1b[1;31m", "active_acked": "\x1b[31m",
                "cleared_unacked": "\x1b[33m"}
OPERATOR = "demo view"


@dataclass
class Seen:
    measurement: str = ""
    readings: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


class View:
    def __init__(self, gateway: Any, compound: Any, config: Any) -> None:
        self.gateway = gateway
        self.compound = compound
        self.config = config
        self.seen: dict[str, Seen] = {}
        self.started = time.monotonic()
        self._listening = False
        self._acks: set[asyncio.Task[int]] = set()

    def attach(self) -> bool:
        """Listen to the pipeline once it exists (it is created by ``Gateway.run``)."""
        if not self._listening and self.gateway.pipeline is not None:
            self.gateway.pipeline.add_listener(self._on_readings)
            self._listening = True
        return self._listening

    def _on_readings(self, device_id: str, readings: Sequence[Reading]) -> None:
        seen = self.seen.setdefault(device_id, Seen())
        for reading in readings:
            seen.measurement = reading.measurement
            seen.readings += 1
            seen.last.update(reading.fields)
            seen.at = time.time()

    async def acknowledge_all(self) -> int:
        """Acknowledge every unacknowledged alarm; returns how many were."""
        service = getattr(self.gateway, "alarms", None)
        if service is None:
            return 0
        done = 0
        for alarm in list(service.alarms()):
            if alarm.state in UNACKED_STATES:
                try:
                    await service.command(AlarmCommand(AlarmAction.ACK, alarm.key.rule,
                                                       alarm.key.device, OPERATOR))
                    done += 1
                except AlarmCommandRefused:  # changed meanwhile: nothing to do
                    pass
        return done

    def _keys(self) -> None:
        try:
            pressed = os.read(sys.stdin.fileno(), 64)
        except OSError:
            return
        if b"a" in pressed.lower():
            task = asyncio.create_task(self.acknowledge_all(), name="demo:ack")
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)

    async def run(self, draw: bool = True) -> None:
        if draw and sys.stdin.isatty():
            with _cbreak(self._keys):
                await self._run(draw)
        else:
            await self._run(draw)

    async def _run(self, draw: bool) -> None:
        while True:
            if self.attach() and draw:
                try:
                    text = await self.render()
                except Exception as exc:  # a view problem must not stop the demo
                    text = f"view error: {exc}"
                sys.stdout.write(CLEAR + text + "\n")
                sys.stdout.flush()
            await asyncio.sleep(1.0 if draw and self._listening else 0.02)

    async def render(self) -> str:
        gw = self.gateway
        width = shutil.get_terminal_size((120, 40)).columns
        up = time.monotonic() - self.started
        cfg = self.config
        out = [f"{BOLD}iotgw demo{RESET}  gateway {cfg.model.gateway.id}  site "
               f"{cfg.model.gateway.site}  up {up:5.0f}s  data {cfg.data_dir}  "
               f"{DIM}(Ctrl-C stops){RESET}", ""]
        out.append(f"{BOLD}{'device':<20} {'driver':<11} {'state':<9} {'readings':>8}  "
                   f"{'counters':<26} last values{RESET}")
        for device in cfg.devices:
            ctx = gw.devices.get(device.id)
            status = ctx.status if ctx is not None else None
            state = str(getattr(status.state, "value", status.state)) if status else "-"
            colour = STATE_COLOUR.get(state, "")
            seen = self.seen.get(device.id, Seen())
            counters = " ".join(f"{k}={v}" for k, v in sorted(
                (status.counters if status else {}).items()) if v)[:26]
            values = ", ".join(f"{k}={_fmt(v)}" for k, v in list(seen.last.items())[:6])
            line = (f"{device.id:<20} {device.driver:<11} {colour}{state:<9}{RESET} "
                    f"{seen.readings:>8}  {counters:<26} {values}")
            out.append(_clip(line, width + len(colour) + len(RESET)))
        stats = gw.stats
        out += ["", f"{BOLD}pipeline{RESET}  readings in {stats.readings_in}  committed "
                f"{stats.readings_committed}  dropped {sum(stats.dropped.values())}"
                + (f" ({dict(stats.dropped)})" if stats.dropped else "")]
        try:
            buf = await gw.buffer.stats()
        except Exception as exc:
            out.append(f"buffer: {exc}")
        else:
            out.append(f"{BOLD}buffer{RESET}    depth {buf.depth_lines} lines "
                       f"({buf.bytes_held} bytes, file {buf.file_bytes})  committed "
                       f"{buf.committed_total}  dropped when full {buf.dropped_full_total}")
            for name, lag in sorted(buf.sinks.items()):
                sink = stats.sinks.get(name)
                state = sink.state if sink else "-"
                sent = sink.sent_lines if sink else 0
                err = f"  last error: {sink.last_error}" if sink and sink.last_error else ""
                out.append(_clip(f"  sink {name:<12} {state:<9} sent {sent}  lag "
                                 f"{lag.lag_lines} lines{err}", width))
        sims = []
        if self.compound.reader is not None:
            sims.append(f"card swipes {self.compound.reader.swipes}")
        if self.compound.bus is not None:
            sims.append(f"RS-485 requests {self.compound.bus.requests}")
        sims.append(f"Modbus requests {sum(m.requests for m in self.compound.modbus)}")
        camera = self.compound.camera
        if camera is not None:
            sims.append(f"plates published {camera.published}"
                        + (f" ({camera.error})" if camera.error else ""))
        out += ["", f"{DIM}simulators: {', '.join(sims)}{RESET}"]
        out += self._alarms(width)
        return "\n".join(out)

    def _alarms(self, width: int) -> list[str]:
        service = getattr(self.gateway, "alarms", None)
        if service is None:
            return []
        shown = sorted((a for a in service.alarms() if str(a.state) != "normal"),
                       key=lambda a: (a.severity, -a.since))
        unacked = sum(1 for a in shown if a.state in UNACKED_STATES)
        out = ["", f"{BOLD}alarms{RESET}    {len(shown)} not normal, {unacked} "
               f"unacknowledged  {DIM}(press a to acknowledge all; or cmd/alarm on the "
               f"ops bus){RESET}"]
        for alarm in shown[:12]:
            colour = ALARM_COLOUR.get(str(alarm.state), "")
            age = max(0.0, time.time() - alarm.since)
            line = (f"  {alarm.severity} {alarm.key.rule:<24} {alarm.key.device:<16} "
                    f"{colour}{alarm.state!s:<16}{RESET} {age:5.0f}s  {alarm.message}")
            out.append(_clip(line, width + len(colour) + len(RESET)))
        return out

    def summary(self) -> str:
        total = sum(s.readings for s in self.seen.values())
        per_measurement: dict[str, int] = {}
        for seen in self.seen.values():
            per_measurement[seen.measurement] = per_measurement.get(seen.measurement, 0) \
                + seen.readings
        parts = ", ".join(f"{m} {n}" for m, n in sorted(per_measurement.items()))
        return (f"demo stopped: {total} readings from {len(self.seen)} devices ({parts}); "
                f"committed {self.gateway.stats.readings_committed}; data in "
                f"{self.config.data_dir}")


@contextlib.contextmanager
def _cbreak(on_key: Callable[[], None]) -> Iterator[None]:
    """Keys without Enter while the view runs; the terminal is restored afterwards."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    try:
        tty.setcbreak(fd)
        loop.add_reader(fd, on_key)
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _clip(line: str, width: int) -> str:
    return line if len(line) <= width else line[:max(10, width - 1)] + "…"
