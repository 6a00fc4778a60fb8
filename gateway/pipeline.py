"""From driver readings to committed buffer chunks.

Readings are validated (bad values dropped and counted, never passed on to break a
whole batch at the store), tagged with site/gateway/device and the installer's tags,
encoded to line protocol once, and committed in batches: one transaction per
``flush_interval`` or per full chunk, whichever comes first. Batching is what makes
fsync-per-commit affordable on an SD card.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from gateway.aio import wait_event
from gateway.buffer import AppendResult, AsyncBuffer
from gateway.lineprotocol import encode_many
from gateway.problems import ProblemLog
from gateway.pseudonym import KEY_SUFFIX, pseudonym_key
from gateway.reading import FieldValue, Reading
from gateway.stats import GatewayStats

log = logging.getLogger("iotgw.pipeline")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLUSH_LINES = 5000
"""Commit early when this many lines are waiting, without waiting for the timer."""

SLICE = 1000
"""Readings validated and encoded per event-loop turn."""

Listener = Callable[[str, Sequence[Reading]], None]


class Pipeline:
    def __init__(self, buffer: AsyncBuffer, stats: GatewayStats, *, site: str, gateway_id: str,
                 flush_interval: float, max_pending: int) -> None:
        self._buffer = buffer
        self._stats = stats
        self._core_tags = {"site": site, "gateway": gateway_id}
        self._device_tags: dict[str, dict[str, str]] = {}
        self._private: dict[str, frozenset[str]] = {}
        self._pseudonymize: Callable[[object], str] | None = None
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._lines: list[bytes] = []
        self._oldest = 0
        self._newest = 0
        self._batch_done: asyncio.Future[bool] | None = None
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._subscribers: list[asyncio.Event] = []
        self._listeners: list[Listener] = []
        self._problems = ProblemLog(log)

    # -- configuration -------------------------------------------------------------

    def set_device(self, device_id: str, installer_tags: Mapping[str, str],
                   pseudonymize: Iterable[str] = ()) -> None:
        """Tags for one device; later layers win so drivers cannot forge site/device.

        ``pseudonymize`` names tags/fields replaced by a keyed hash here, before the
        buffer, the listeners (ops bus) or any sink sees them; a hidden field also gets
        its numeric twin ``<name>_key`` (gateway/pseudonym.py says why)."""
        self._device_tags[device_id] = {**installer_tags, **self._core_tags,
                                        "device": device_id}
        names = frozenset(pseudonymize)
        if names:
            self._private[device_id] = names
        else:
            self._private.pop(device_id, None)

    def set_pseudonymizer(self, pseudonymizer: Callable[[object], str] | None) -> None:
        self._pseudonymize = pseudonymizer

    def set_site(self, site: str, gateway_id: str) -> None:
        self._core_tags = {"site": site, "gateway": gateway_id}
        for device_id, tags in self._device_tags.items():
            tags.update(self._core_tags, device=device_id)

    def subscribe(self) -> asyncio.Event:
        """An event set after every commit: forwarders sleep on it instead of polling."""
        event = asyncio.Event()
        self._subscribers.append(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        if event in self._subscribers:
            self._subscribers.remove(event)

    def notify_committed(self) -> None:
        """Something else committed lines to the buffer (the alarm journal's ``alarm``
        series): wake the forwarders as after one of our own commits."""
        for event in self._subscribers:
            event.set()

    def add_listener(self, listener: Listener) -> None:
        """Called with every accepted, tagged batch (the ops bus publishes live values)."""
        self._listeners.append(listener)

    # -- intake --------------------------------------------------------------------

    async def submit(self, device_id: str, readings: Sequence[Reading]) -> None:
        """Queue readings for the next commit; waits while too many are queued."""
        while len(self._lines) >= self._max_pending:
            self._space.clear()
            await self._space.wait()
        slices = [readings] if len(readings) <= SLICE else [
            readings[start:start + SLICE] for start in range(0, len(readings), SLICE)]
        for index, part in enumerate(slices):
            if index:
                # A burst of thousands (a catch-up, a backlog from a device) must not hold
                # the loop: forwarders, the ops bus and the watchdog need their turns.
                await asyncio.sleep(0)
            accepted = self._accept(device_id, part)
            if accepted and self._listeners:
                for listener in self._listeners:
                    listener(device_id, accepted)

    async def submit_and_wait(self, device_id: str, readings: Sequence[Reading]) -> None:
        """Returns only after the readings are committed to disk: for sources that must
        not acknowledge a message before it is safe (MQTT QoS 1)."""
        await self.submit(device_id, readings)
        await self.wait_committed()

    async def wait_committed(self) -> None:
        """Returns once everything queued so far is committed."""
        if self._batch_done is not None:
            await asyncio.shield(self._batch_done)

    async def wait_stored(self) -> bool:
        """Like :meth:`wait_committed`; False when the commit of what was queued did not
        keep all of it: the buffer was full (``when_full``, or short of disk space below
        ``min_free``) and dropped some of these new lines at once. A source that answers
        its sender after the commit (an HTTP push) must then not say "stored": the sender
        keeps the event and retries. (Found by the outside probe: on a full disk every
        answered camera post was dropped in the same commit.)"""
        if self._batch_done is None:
            return True
        return await asyncio.shield(self._batch_done)

    def _accept(self, device_id: str, readings: Sequence[Reading]) -> list[Reading]:
        base = self._device_tags.get(device_id)
        if base is None:
            base = {**self._core_tags, "device": device_id}
        stats = self._stats
        stats.readings_in += len(readings)
        lines = self._lines
        accepted: list[Reading] = []
        oldest, newest = self._oldest, self._newest
        private = self._private.get(device_id)
        if private:
            readings = [self._hide(reading, private) for reading in readings]
        for reading in readings:
            fields = reading.fields
            if not _fields_ok(fields):
                fields = self._clean_fields(device_id, fields)
                if not fields:
                    stats.dropped["no_fields"] += 1
                    continue
            tags = reading.tags
            if tags:
                if not all(type(v) is str for v in tags.values()):
                    tags = self._clean_tags(device_id, tags)
                tags = {**tags, **base}
            else:
                tags = base
            if not reading.measurement:
                stats.dropped["no_measurement"] += 1
                continue
            t = reading.time_ns
            if type(t) is not int or not INT64_MIN < t < INT64_MAX:
                # Line protocol and the buffer's index are int64 ns (years 1677-2262): one
                # such reading used to stop every commit of every device (OverflowError).
                self._bad_time(device_id, t)
                continue
            accepted.append(Reading(reading.measurement, tags, fields, t))
            if not oldest or t < oldest:
                oldest = t
            if t > newest:
                newest = t
        try:
            encoded = encode_many(accepted)
        except Exception:  # a value line protocol cannot carry (a lone surrogate...)
            # (oldest/newest may still count a dropped reading: bounds, not an index)
            accepted, encoded = self._encode_each(device_id, accepted)
            if not accepted:
                return accepted
        self._oldest, self._newest = oldest, newest
        lines.extend(encoded)
        if accepted and self._batch_done is None:
            self._batch_done = asyncio.get_running_loop().create_future()
        if len(lines) >= FLUSH_LINES:
            self._wake.set()
        return accepted

    def _bad_time(self, device_id: str, time_ns: object) -> None:
        self._stats.dropped["invalid_time"] += 1
        self._problems.report(f"invalid_time:{device_id}",
                              f"device {device_id}: dropped readings whose time is not an "
                              "int64 nanosecond timestamp (years 1677-2262)",
                              detail=f"first: {time_ns!r:.40}", level=logging.WARNING)

    def _encode_each(self, device_id: str, readings: list[Reading]
                     ) -> tuple[list[Reading], list[bytes]]:
        """The slow path after a batch failed to encode: keep every reading that encodes,
        drop (count, log once per device and kind) the ones that cannot. One bad value
        must cost its reading, never the batch or the task that submitted it."""
        kept: list[Reading] = []
        lines: list[bytes] = []
        for reading in readings:
            try:
                (line,) = encode_many((reading,))
            except Exception as exc:
                self._stats.dropped["unencodable"] += 1
                self._problems.report(
                    f"unencodable:{device_id}:{type(exc).__name__}",
                    f"device {device_id}: dropped a reading that cannot be written as line "
                    f"protocol ({type(exc).__name__}: {str(exc)[:120]})",
                    level=logging.WARNING)
                continue
            kept.append(reading)
            lines.append(line)
        return kept, lines

    def _hide(self, reading: Reading, names: frozenset[str]) -> Reading:
        hide = self._pseudonymize
        if hide is None:  # config validation requires a key; never pass raw data on
            raise RuntimeError("pseudonymisation configured without a key")
        tags = {k: hide(v) if k in names else v for k, v in reading.tags.items()}
        fields: dict[str, FieldValue] = {}
        keys: dict[str, FieldValue] = {}
        for name, value in reading.fields.items():
            if name in names:
                value = hide(value)
                twin = pseudonym_key(value)
                if twin is not None:  # the numeric twin VictoriaMetrics keeps
                    keys[name + KEY_SUFFIX] = twin
            fields[name] = value
        for name, number in keys.items():
            fields.setdefault(name, number)  # a field the driver named so itself wins
        return Reading(reading.measurement, tags, fields, reading.time_ns)

    def _clean_fields(self, device_id: str, fields: Mapping[str, object]) -> dict[str, FieldValue]:
        kept: dict[str, FieldValue] = {}
        for key, value in fields.items():
            reason = _field_problem(value)
            if reason is None and isinstance(key, str) and key:
                kept[key] = cast(FieldValue, value)  # _field_problem checked its type
            else:
                reason = reason or "invalid_field_name"
                self._stats.dropped[reason] += 1
                self._problems.report(
                    f"{reason}:{device_id}",
                    f"device {device_id}: dropped field {key!r} ({reason}: {value!r:.60})",
                    level=logging.WARNING)
        return kept

    def _clean_tags(self, device_id: str, tags: Mapping[str, object]) -> dict[str, str]:
        kept = {k: v for k, v in tags.items() if type(v) is str}
        self._stats.dropped["invalid_tag"] += len(tags) - len(kept)
        self._problems.report(f"invalid_tag:{device_id}",
                              f"device {device_id}: dropped non-string tag values",
                              level=logging.WARNING)
        return kept

    # -- commit loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Commit forever; cancelled at shutdown, after which :meth:`flush` runs."""
        while True:
            await wait_event(self._wake, self._flush_interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Commit everything queued. On a buffer error the lines stay queued and the
        error propagates, so the supervisor retries with backoff."""
        if not self._lines:
            return
        lines, oldest, newest, done = self._lines, self._oldest, self._newest, self._batch_done
        self._lines, self._oldest, self._newest, self._batch_done = [], 0, 0, None
        append = asyncio.ensure_future(self._buffer.append(lines, oldest, newest))
        try:
            result = await asyncio.shield(append)
        except asyncio.CancelledError:
            # The commit runs in the buffer's thread and cannot stop half way. Let it
            # finish and account for it: re-queuing lines it did commit would commit
            # them twice at the final flush.
            await asyncio.wait({append})
            if append.cancelled() or append.exception() is not None:
                self._requeue(lines, oldest, newest, done)
            else:
                self._committed(append.result(), done, len(lines))
            raise
        except Exception:
            self._requeue(lines, oldest, newest, done)
            raise
        self._committed(result, done, len(lines))

    def _requeue(self, lines: list[bytes], oldest: int, newest: int,
                 done: asyncio.Future[bool] | None) -> None:
        self._lines[:0] = lines
        self._oldest = min(filter(None, (oldest, self._oldest)), default=0)
        self._newest = max(newest, self._newest)
        if done is None:
            return
        later = self._batch_done
        if later is None or later is done:
            self._batch_done = done
        else:
            # Readings came in while the failed commit ran and got a future of their
            # own: the requeued lines now commit with them, so whoever waits on the
            # older future learns that batch's outcome (dropping it hung them forever;
            # found by reading, in the HTTP probe).
            later.add_done_callback(lambda finished: _follow(finished, done))


    def _committed(self, result: AppendResult, done: asyncio.Future[bool] | None,
                   queued: int) -> None:
        self._stats.readings_committed += result.stored
        if result.dropped:
            self._stats.dropped["buffer_full"] += result.dropped
        if done is not None and not done.done():
            done.set_result(result.stored >= queued)
        self._space.set()
        for event in self._subscribers:
            event.set()

    @property
    def pending(self) -> int:
        return len(self._lines)


def _fields_ok(fields: Mapping[str, object]) -> bool:
    if not fields:
        return False
    # Any: the checks dispatch on `kind`, an alias of type(value) that mypy cannot narrow
    # through; this runs for every reading, so no second type() call per branch.
    value: Any
    for value in fields.values():
        kind = type(value)
        if kind is float:
            if not math.isfinite(value):
                return False
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                return False
        elif kind is not bool and kind is not str:
            return False
    return True


def _field_problem(value: object) -> str | None:
    # The slow path, taken only for a reading that failed _fields_ok: exact type checks
    # that mypy narrows (bool, an int subclass, must not pass as int).
    if type(value) is float:
        return None if math.isfinite(value) else "invalid_value"
    if type(value) is int:
        return None if INT64_MIN <= value <= INT64_MAX else "invalid_value"
    if type(value) is bool or type(value) is str:
        return None
    return "invalid_type"


def _follow(source: asyncio.Future[bool], target: asyncio.Future[bool]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
