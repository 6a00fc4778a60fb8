"""The engine inside a running gateway: fed by the pipeline, committed, then announced.

Order of every transition: the engine decides it (in memory, synchronously, while the
pipeline hands over a batch of readings), the committer writes it to the journal, the
alarm's saved state and the ``alarm`` series in one transaction, and only then are the
listeners (ops bus, metrics, Home Assistant, actions) told, in order. If the process dies
before the commit, nobody heard of the transition and the restarted engine, restored from
the journal, decides it again with the same ``seq``: nothing is announced twice.

Timers (on-delay, off-delay, timed shelve, re-alarm, staleness, counts, schedules) are a
heap in the engine; this task sleeps until the next one is due (or something is to be
committed) and fires them on the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.aio import wait_event
from gateway.alarms import journal
from gateway.alarms.checks import rule_warnings
from gateway.alarms.config import RuleConfig
from gateway.alarms.engine import DeviceInfo, Engine, EngineCounters
from gateway.alarms.model import (
    ACTIVE_STATES,
    AlarmCommand,
    AlarmSnapshot,
    Transition,
    TransitionListener,
)
from gateway.alarms.rules import CompiledRule, compile_rule, load_lists
from gateway.buffer import AsyncBuffer
from gateway.problems import ProblemLog
from gateway.reading import Reading

if TYPE_CHECKING:
    from gateway.config.loader import LoadedConfig

log = logging.getLogger("iotgw.alarms")

PRUNE_EVERY = 3600.0
"""Journal entries past ``alarms.journal_keep`` are deleted this often (with a commit)."""

IDLE_WAKE = 1.0
"""Longest sleep without a due timer (the clock may jump; timers fire within this)."""


def device_infos(config: LoadedConfig) -> dict[str, DeviceInfo]:
    return {d.id: DeviceInfo(tags=dict(d.tags), private=frozenset(d.pseudonymize),
                             interval=d.poll_interval()) for d in config.devices}


def build_rules(config: LoadedConfig,
                pseudonymize: Callable[[object], str] | None) -> list[CompiledRule]:
    """Compile the config's rules and read their lists (hashed where pseudonymised)."""
    from gateway.alarms.checks import selected_devices

    base = config.path.resolve().parent
    devices = list(config.devices)
    compiled = []
    for rule_config in config.model.rules:
        if not rule_config.enabled:
            continue
        rule = compile_rule(rule_config)
        if rule_config.lists:
            private = [frozenset(d.pseudonymize)
                       for d in selected_devices(rule_config, devices)]
            rule.lists = load_lists(rule_config, base, private, pseudonymize)
        compiled.append(rule)
    return compiled


class AlarmRuntime:
    """The gateway's :class:`~gateway.alarms.model.AlarmService`."""

    def __init__(self, engine: Engine, buffer: AsyncBuffer, core_tags: Mapping[str, str], *,
                 clock: Callable[[], float] = time.time,
                 checkpoint_interval: float = 10.0,
                 on_committed: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self._buffer = buffer
        self._core_tags = dict(core_tags)
        self._clock = clock
        self._checkpoint_interval = checkpoint_interval
        self._on_committed = on_committed
        self._listeners: list[TransitionListener] = []
        self._wake = asyncio.Event()
        self._unsent: list[Transition] = []
        self._unsent_rows: dict[tuple[str, str], journal.StateRecord] = {}
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._last_checkpoint = clock()
        self._last_prune = 0.0
        self._problems = ProblemLog(log)
        self.committed = 0
        """Transitions committed (and announced) since start."""

    # -- the AlarmService protocol -----------------------------------------------------

    def add_transition_listener(self, listener: TransitionListener) -> None:
        self._listeners.append(listener)

    def alarms(self) -> list[AlarmSnapshot]:
        return [a.snapshot() for a in self.engine.alarms.values()]

    async def command(self, command: AlarmCommand) -> AlarmSnapshot:
        self.engine.advance(self._clock())  # a due unshelve happens before a new command
        alarm = self.engine.command(command, self._clock())
        waiter = asyncio.get_running_loop().create_future()
        # Commits go in order: the command's transition is committed once as many
        # transitions as the engine had produced by now are.
        self._waiters.append((self.engine.produced, waiter))
        self._wake.set()
        await asyncio.shield(waiter)
        return alarm.snapshot()

    # -- beyond the protocol: what metrics, status and actions read -----------------------

    @property
    def counters(self) -> EngineCounters:
        """Readings, evaluations, transitions by cause, rule errors by rule, chatter."""
        return self.engine.counters

    def raises_within(self, seconds: float, now: float | None = None) -> int:
        """Raises in the last ``seconds`` (EEMUA 191 flood: more than
        ``alarms.flood_count`` within ``alarms.flood_window``)."""
        cutoff = (self._clock() if now is None else now) - seconds
        return sum(1 for t in self.engine.counters.raises if t > cutoff)

    def flooding(self, now: float | None = None) -> bool:
        settings = self.engine.settings
        return self.raises_within(settings.flood_window, now) > settings.flood_count

    def rule_config(self, rule_id: str) -> RuleConfig | None:
        """The running config of a rule (its actions, description ...)."""
        rule = self.engine.rules.get(rule_id)
        return None if rule is None else rule.config

    # -- inputs (called on the event loop) ---------------------------------------------

    def on_readings(self, device_id: str, readings: Sequence[Reading]) -> None:
        """The pipeline's listener: accepted, tagged (and pseudonymised) readings."""
        engine = self.engine
        engine.process(device_id, readings, self._clock())
        if engine.pending_output:
            self._wake.set()

    def on_device_state(self, device_id: str, state: str) -> None:
        self.engine.device_state(device_id, state, self._clock())
        if self.engine.pending_output:
            self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables, restore every saved alarm, arm its timers; the transitions
        this causes (alarms of removed rules) are committed by :meth:`run`."""
        await self._buffer.commit_with("alarm schema", [], 0, 0, journal.ensure_schema)
        rows = await self._buffer.query(journal.load_state)
        now = self._clock()
        self.engine.restore(rows, now)
        self.engine.start(now)
        self._wake.set()
        active = sum(1 for a in self.engine.alarms.values() if a.state in ACTIVE_STATES)
        log.info("alarms: %d rules, %d alarms restored (%d active)", len(self.engine.rules),
                 len(self.engine.alarms), active)

    async def run(self) -> None:
        """Supervised: fire timers, commit, announce; forever."""
        while True:
            due = self.engine.next_due()
            now = self._clock()
            timeout = IDLE_WAKE if due is None else min(IDLE_WAKE, max(0.0, due - now))
            if timeout > 0 and not self._unsent:
                await wait_event(self._wake, timeout)
            self._wake.clear()
            self.engine.advance(self._clock())
            await self.flush()

    async def flush(self, checkpoint: bool = False) -> None:
        """Commit whatever the engine decided, then tell the listeners."""
        engine = self.engine
        transitions, dirty = engine.take()
        digests = {r.id: r.digest for r in engine.rules.values()}
        now = self._clock()
        if checkpoint or now - self._last_checkpoint >= self._checkpoint_interval:
            self._last_checkpoint = now
            dirty = list({a.pair: a for a in (*dirty, *engine.checkpoint())}.values())
        self._unsent.extend(transitions)
        for record in journal.state_records(dirty, digests):
            self._unsent_rows[(record[0], record[1])] = record
        if not self._unsent and not self._unsent_rows:
            return
        batch, rows = list(self._unsent), list(self._unsent_rows.values())
        lines, oldest, newest = journal.alarm_lines(batch, self._core_tags)
        prune_before = None
        if now - self._last_prune >= PRUNE_EVERY:
            self._last_prune = now
            prune_before = now - self.engine.settings.journal_keep

        def write(conn: sqlite3.Connection) -> None:
            journal.write(conn, batch, rows)
            if prune_before is not None:
                journal.prune(conn, prune_before)

        commit = asyncio.ensure_future(
            self._buffer.commit_with("alarm journal", lines, oldest, newest, write))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            # The commit runs on the buffer's thread and cannot stop half way: let it
            # finish and account for it, or the final flush at shutdown would write the
            # same (alarm_id, seq) again.
            await asyncio.wait({commit})
            if not commit.cancelled() and commit.exception() is None:
                self._committed(batch, rows, bool(lines))
            raise
        self._committed(batch, rows, bool(lines))

    def _committed(self, batch: list[Transition], rows: list[journal.StateRecord],
                   lines: bool) -> None:
        del self._unsent[: len(batch)]
        for record in rows:
            if self._unsent_rows.get((record[0], record[1])) is record:
                del self._unsent_rows[(record[0], record[1])]
        if lines and self._on_committed is not None:
            self._on_committed()
        self.committed += len(batch)
        for transition in batch:
            self._announce(transition)
        self._release()

    def _announce(self, transition: Transition) -> None:
        for listener in self._listeners:
            try:
                listener(transition)
            except Exception as exc:  # one broken output must not stop the others
                self._problems.report(f"listener:{getattr(listener, '__qualname__', '?')}",
                                      f"alarm listener failed: {type(exc).__name__}: {exc}",
                                      exc_info=exc)

    def _release(self) -> None:
        keep = []
        for mark, waiter in self._waiters:
            if mark <= self.committed:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                keep.append((mark, waiter))
        self._waiters = keep

    async def close(self) -> None:
        """Final commit at shutdown: saves timers and window/count state."""
        try:
            await self.flush(checkpoint=True)
        except Exception as exc:
            log.error("alarms: final commit failed: %s", exc)

    async def reload(self, config: LoadedConfig,
                     pseudonymize: Callable[[object], str] | None) -> None:
        rules = build_rules(config, pseudonymize)
        self.engine.replace_rules(rules, device_infos(config), self._clock())
        for warning in rule_warnings(config.model, config.path.resolve().parent):
            log.warning("alarms: %s", warning)
        self._wake.set()


def create(config: LoadedConfig, buffer: AsyncBuffer,
           pseudonymize: Callable[[object], str] | None,
           uplink_lost: Callable[[], bool],
           on_committed: Callable[[], None] | None) -> AlarmRuntime | None:
    """The runtime for ``config``, or None when it has no rules (the gateway then does
    no alarm work at all: the pipeline gets no listener)."""
    if not config.model.rules:
        return None
    rules = build_rules(config, pseudonymize)
    for warning in rule_warnings(config.model, config.path.resolve().parent):
        log.warning("alarms: %s", warning)
    model = config.model
    engine = Engine(rules, devices=device_infos(config), settings=model.alarms,
                    uplink_lost=uplink_lost)
    core = {"site": model.gateway.site, "gateway": model.gateway.id}
    runtime = AlarmRuntime(engine, buffer, core,
                           checkpoint_interval=model.alarms.checkpoint_interval,
                           on_committed=on_committed)
    return runtime
