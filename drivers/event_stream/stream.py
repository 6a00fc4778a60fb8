"""One event stream per device host, shared by every device configured on it.

The shared-connection pattern of :mod:`gateway.plugin`: the first device on a host
creates the :class:`HostStream` (``SharedResources`` key ``("event_stream", host,
port)``), whose reader runs as a supervised task; each device attaches with its own
filters (channels, event codes), context and backfill position; the last one to leave
closes it.

The reader connects, splits the multipart body as bytes arrive, and waits for each part
with a timeout that ends at the silence threshold (three heartbeats for Dahua). The
device is ``up`` from the first complete part, not from the answer's headers: a stream
that is open but says nothing is ``stream_silent``, one that sends bytes that never make
a part is ``bad_answer``, and both are reconnected with backoff; a refused password is
``auth_failed`` (retried only after ``auth_retry``), no connection is ``unreachable``;
each shows on every attached device's state. A malformed part is counted, logged once
per kind and dead-lettered; it never ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from drivers.event_stream.active import ActiveTracker
from drivers.event_stream.client import DeviceHttp
from drivers.event_stream.conditions import (
    AUTH_FAILED,
    BAD_ANSWER,
    STATES,
    UP,
    BadAnswer,
    StreamSilent,
    Unreachable,
    condition_of,
)
from drivers.event_stream.config import EventStreamConfig
from drivers.event_stream.events import BadPart, StreamEvent
from drivers.event_stream.multipart import Malformed, MultipartSplitter, Part, boundary_of
from drivers.event_stream.position import Position
from drivers.event_stream.profiles import PROFILES
from gateway.backoff import Backoff
from gateway.config.types import secret_value
from gateway.driver import DeviceContext
from gateway.errors import DeviceError
from gateway.plugin import DeadLetter, GatewayHandle
from gateway.problems import ProblemLog
from gateway.reading import FieldValue, Reading

log = logging.getLogger("iotgw.event_stream")

SWEEP = 0.5
"""Longest single wait on the stream: active events are expired this often."""
HEALTH_MEASUREMENT = "camera_health"
ANSWERED = frozenset({AUTH_FAILED, BAD_ANSWER})
"""Conditions in which the device did answer (so it is alive)."""
SERIAL_SLOTS = 1000
"""An access event's timestamp is its device second plus ``serialNo % 1000``
milliseconds: two swipes in one second stay two points, and the same event seen on the
stream and again by the backfill is the same point. Milliseconds, not finer: stores such
as VictoriaMetrics keep millisecond timestamps and would merge finer slots."""


class Attachment:
    """A device as its host's stream sees it."""

    def __init__(self, config: EventStreamConfig, ctx: DeviceContext,
                 position: Position) -> None:
        self.config = config
        self.ctx = ctx
        self.position = position
        self.channels = frozenset(config.channels)
        self.events = frozenset(e.lower() for e in config.events)
        """Case-insensitive: Hikvision firmware says VMD or vmd, linedetection or
        LineDetection, depending on its age."""

    def wants(self, event: StreamEvent) -> bool:
        if self.events and event.code.lower() not in self.events:
            return False
        return not self.channels or event.channel is None or event.channel in self.channels


class HostStream:
    def __init__(self, gateway: GatewayHandle, config: EventStreamConfig) -> None:
        self.gateway = gateway
        self.config = config
        self.profile = PROFILES[config.profile]
        self.name = f"event_stream:{config.host}:{config.port}"
        self.http = DeviceHttp(config.base_url(), auth=config.auth, username=config.username,
                               password=secret_value(config.password),
                               connect_timeout=config.connect_timeout,
                               verify_tls=config.verify_tls)
        self.attachments: list[Attachment] = []
        self.condition = "starting"
        self.detail: str | None = None
        self.tracker = ActiveTracker(config.clear_after)
        self.counters = gateway.counters(self.name)
        self.connects = 0
        """Connections that delivered a part so far: a healthy stream is connected once."""
        self.connected = asyncio.Event()
        """Set on each accepted connect: the backfill task's cue."""
        self.problems = ProblemLog(log)
        self._last_arrival = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def create(cls, gateway: GatewayHandle, config: EventStreamConfig) -> HostStream:
        stream = cls(gateway, config)
        if config.auth == "basic" and config.scheme == "http":
            # Said once per host at start (found missing by the outside probe): Basic over
            # plain HTTP puts the password on the LAN in clear with every connect.
            log.warning("%s: auth: basic over plain http sends the password in clear on "
                        "every connect; prefer digest, or scheme: https", stream.name)
        gateway.tasks.start(stream.name, stream.run, on_failure=stream._task_failed)
        if stream.profile.backfill_path is not None:
            from drivers.event_stream.backfill import backfill_loop

            gateway.tasks.start(f"{stream.name}:backfill", lambda: backfill_loop(stream),
                                on_failure=stream._task_failed)
        return stream

    def _task_failed(self, exc: BaseException) -> None:
        self.counters["task_failures"] += 1
        self._set_condition(BAD_ANSWER, f"reader failed: {type(exc).__name__}: {exc}")

    async def close(self) -> None:
        await self.gateway.tasks.stop([self.name, f"{self.name}:backfill"])
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.close()

    def attach(self, attachment: Attachment) -> None:
        self.attachments.append(attachment)
        if self.condition != "starting":
            self._apply(attachment)
        if attachment.config.backfill and self.condition == UP:
            self.connected.set()  # a device added while connected backfills at once

    def detach(self, attachment: Attachment) -> None:
        self.attachments.remove(attachment)

    # -- state -------------------------------------------------------------------------

    def _set_condition(self, condition: str, detail: str | None) -> None:
        changed = condition != self.condition
        self.condition, self.detail = condition, detail
        for att in self.attachments:
            self._apply(att)
        if changed:
            self._spawn(self._health_readings(condition))

    def _apply(self, att: Attachment) -> None:
        error = None if self.condition == UP else f"{self.condition}: {self.detail}"
        att.ctx.set_state(STATES.get(self.condition, STATES[BAD_ANSWER]), error,
                          condition=self.condition if self.condition in STATES else None)

    async def _health_readings(self, condition: str) -> None:
        """A ``camera_health`` reading per device on each change: a rule input (an
        offline camera raises an alarm) beside the state topic."""
        now = self._arrival()
        for att in list(self.attachments):
            fields: dict[str, FieldValue] = {"up": int(condition == UP), "condition": condition}
            await self._submit(att, [Reading(HEALTH_MEASUREMENT, {"probe": "stream"}, fields,
                                             now)], [None])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _seen(self) -> None:
        """The device answered: every attached device's last-seen is now (set before a
        state change, whose message carries it)."""
        seen = time.time()
        for att in self.attachments:
            att.ctx.status.last_seen = seen

    # -- the reader --------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        backoff = Backoff(base=0.5, cap=cfg.reconnect_max)
        while True:
            try:
                talked = await self._session(backoff)
                failure: DeviceError = Unreachable(
                    f"{self.name}: the device closed the stream"
                    + ("" if talked else " before sending a part"))
                self.counters["closed_by_device"] += 1
            except DeviceError as exc:
                failure = exc
            condition = condition_of(failure)
            self.counters[condition] += 1
            if condition in ANSWERED:
                self._seen()  # it answered (a 401 is an answer): alive, last-seen moves
            self._set_condition(condition, str(failure))
            self.problems.report("stream", f"{self.name}: {condition}: {failure}",
                                 level=logging.WARNING, kind=condition)
            stops = self.tracker.clear_all("disconnected")
            if stops:
                await self._deliver(stops, None)
            await asyncio.sleep(cfg.auth_retry if condition == AUTH_FAILED else backoff.next())

    async def _session(self, backoff: Backoff) -> bool:
        """Read one connection until it ends; True if it delivered at least one part.

        The answer's headers prove nothing about the device: a hung firmware, a proxy or
        a hostile server answers ``200 multipart`` and then sends nothing, garbage, or a
        byte a second. Such a stream was shown ``up`` on every connect and dropped at
        every silence threshold, so the device flipped online/offline and an offline
        alarm never held (found by the outside probe). The device keeps the condition it
        had until the first complete part (a heartbeat, a keep-alive, an event) arrives;
        a stream that never delivers one fails by its own reason and backs off."""
        cfg = self.config
        silence = cfg.silence_seconds()
        async with self.http.stream(self.profile.path(cfg)) as body:
            kind = (body.content_type or "").split(";", 1)[0].strip().lower()
            if kind and not kind.startswith("multipart/"):
                # a login page, an error page, a proxy: not an event stream
                raise BadAnswer(f"{self.name}: answered {kind[:40]}, not a multipart stream")
            splitter = MultipartSplitter(boundary_of(body.content_type), cfg.max_part)
            # The backfill asks the device's log, not the stream: an accepted request is
            # enough, and waiting for a part could let a fresh swipe move the position
            # past the gap before the backfill has read it.
            self.connected.set()
            got_part = False
            stray = 0  # bytes since the last part that were no part (yet)
            deadline = time.monotonic() + silence
            # "Recovered" is logged once parts have kept coming for a silence period, not
            # on connect: a stream that connects and goes silent (or drips bytes that are
            # never a part) again and again would log two lines per cycle, forever (found
            # by the outside probe); now its trouble is logged once.
            healthy_at: float | None = deadline
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise self._no_part(silence, stray)
                chunk = await body.read(min(deadline - now, SWEEP))
                if chunk == b"":
                    return got_part
                if chunk is not None:
                    items = splitter.feed(chunk)
                    if any(isinstance(item, Part) for item in items):
                        deadline = time.monotonic() + silence
                        stray = 0
                        if not got_part:
                            got_part = True
                            self._first_part(backoff)
                        if healthy_at is not None and time.monotonic() >= healthy_at:
                            healthy_at = None
                            self.problems.recovered("stream", f"{self.name}: stream connected")
                        self._seen()
                    else:
                        stray += len(chunk)
                    await self._handle(items)
                    if splitter.finished:
                        return got_part
                expired = self.tracker.expire(time.monotonic())
                if expired:
                    await self._deliver(expired, None)

    def _first_part(self, backoff: Backoff) -> None:
        """The device really talks: now it is up, and the backoff starts again from its
        base (not on connect: a device that accepts and drops at once is not hammered)."""
        self.connects += 1
        self._seen()
        self._set_condition(UP, None)
        backoff.reset()

    def _no_part(self, silence: float, stray: int) -> DeviceError:
        """No complete part within the silence threshold: ``stream_silent`` if nothing
        came (half-open TCP, hung firmware), ``bad_answer`` if bytes came that never
        made a part (garbage, a drip, a part that never ends)."""
        if stray:
            return BadAnswer(f"{self.name}: {stray} bytes in {silence:g}s but no complete "
                             "part")
        return StreamSilent(f"{self.name}: no part for {silence:g}s")

    async def _handle(self, items: Sequence[Part | Malformed]) -> None:
        for item in items:
            if isinstance(item, Malformed):
                self._bad(item.kind, item.detail, b"")
                continue
            if item.content_type.startswith("image/"):
                self.counters["pictures"] += 1
                self.counters["picture_bytes"] += len(item.body)
                continue
            try:
                events = self.profile.parse(item)
            except BadPart as exc:
                self._bad(exc.kind, str(exc), item.body)
                continue
            now = time.monotonic()
            kept: list[StreamEvent] = []
            for event in events:
                if event.code == "heartbeat" or (event.code, event.action) == ("videoloss",
                                                                               "stop"):
                    self.counters["heartbeats"] += 1
                    continue
                kept.extend(self.tracker.offer(event, now) if self.profile.repeats_active
                            else [event])
            if kept:
                await self._deliver(kept, item.body)

    def _bad(self, kind: str, detail: str, payload: bytes) -> None:
        """Counted on every device of the host, logged once per kind, dead-lettered."""
        self.counters[kind] += 1
        # Once per kind: the detail (which garbage, which value) differs from part to
        # part and is logged with the first only; repeats are counted and summarised
        # (the detail in the compared message logged 44 lines for one kind: outside probe).
        self.problems.report(f"part:{kind}", f"{self.name}: malformed part ({kind})",
                             detail=detail[:200], level=logging.WARNING,
                             summary_every=300.0, kind=kind)
        for att in self.attachments:
            att.ctx.count(kind)
        if payload and self.attachments:
            # The part may be any attached device's: withheld if one of them pseudonymises
            # (a raw card number or plate must not leave the process).
            private = self._private()
            note = " (payload withheld: a device on this stream pseudonymises fields)" \
                if private else ""
            self.gateway.dead_letter(DeadLetter(
                self.attachments[0].ctx.device_id, f"{kind}: {detail[:200]}{note}",
                b"" if private else payload[:65536], self.name))

    def _private(self, att: Attachment | None = None) -> bool:
        """Does ``att`` (or any device on this stream) pseudonymise fields?"""
        return any(a.config.pseudonymize for a in
                   ([att] if att is not None else self.attachments))

    # -- readings ----------------------------------------------------------------------

    def _arrival(self) -> int:
        """Arrival time, at least a millisecond after the previous one of this stream: a
        store keeps one point per series and time, and some keep milliseconds only
        (VictoriaMetrics), so a Start and its Stop in one burst must not share one."""
        self._last_arrival = max(time.time_ns(), self._last_arrival + 1_000_000)
        return self._last_arrival

    def reading(self, att: Attachment, event: StreamEvent) -> Reading:
        tags = dict(event.tags) if event.shaped else {"event": event.code, **event.tags}
        if event.access:
            fields: dict[str, FieldValue] = dict(event.fields) if event.shaped else \
                {"action": event.action, **event.fields}
            if event.serial is not None:
                fields["serial"] = event.serial
            time_ns = event.time_ns if event.time_ns is not None else self._arrival()
            if event.serial is not None and event.time_ns is not None:
                time_ns = (time_ns // 1_000_000_000) * 1_000_000_000 + \
                    (event.serial % SERIAL_SLOTS) * 1_000_000
            return Reading(att.config.access_measurement, tags, fields, time_ns)
        if event.channel is not None:
            tags["channel"] = str(event.channel)
        fields = {"active": event.action != "stop", "action": event.action, **event.fields}
        return Reading(att.config.measurement, tags, fields, self._arrival())

    async def _deliver(self, events: Sequence[StreamEvent], payload: bytes | None) -> None:
        """Route events to the devices that want them, de-duplicate access events by id,
        submit, and advance backfill positions once committed."""
        for att in list(self.attachments):
            readings: list[Reading] = []
            kept: list[StreamEvent | None] = []
            for event in events:
                if not att.wants(event):
                    continue
                if event.access and not att.position.is_new(event):
                    att.ctx.count("duplicate")
                    continue
                readings.append(self.reading(att, event))
                kept.append(event)
            if readings:
                await self._submit(att, readings, kept, payload)

    async def _submit(self, att: Attachment, readings: list[Reading],
                      events: list[StreamEvent | None], payload: bytes | None = None) -> None:
        """Submit; a refused batch is retried a reading at a time so one poison value
        costs one event (counted, dead-lettered). Access events advance the device's
        backfill position after their commit."""
        device_id = att.ctx.device_id
        accepted: list[StreamEvent] = []
        try:
            await self.gateway.submit(device_id, readings)
            accepted = [e for e in events if e is not None and e.access]
        except Exception:
            for reading, event in zip(readings, events, strict=True):
                try:
                    await self.gateway.submit(device_id, (reading,))
                except Exception as exc:
                    att.ctx.count("poison")
                    if event is not None:
                        att.position.forget(event)
                    private = self._private(att)
                    self.gateway.dead_letter(DeadLetter(
                        device_id, f"poison: {type(exc).__name__}: {exc}"[:300]
                        + (" (payload withheld: the device pseudonymises fields)"
                           if private else ""),
                        b"" if private else
                        (payload or repr(reading.fields).encode())[:65536], self.name))
                    continue
                if event is not None and event.access:
                    accepted.append(event)
        if accepted:
            self._spawn(self._advance_after_commit(att.position, accepted))

    async def _advance_after_commit(self, position: Position, events: list[StreamEvent]
                                    ) -> None:
        await self.gateway.wait_committed()
        try:
            position.advance(events)
        except OSError as exc:
            self.problems.report("position", f"{self.name}: cannot save the backfill "
                                 f"position {position.path}: {exc}")
