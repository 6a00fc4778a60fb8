"""The ops bus: the gateway as operations staff see it, under ``mqtt.base_topic``.

Topics are documented in docs/topics.md. Retained state (``status``,
``devices/<id>/state``) is kept here and re-published after every reconnect; live values
are QoS 0 and may be dropped (counted) while the broker is away; events are QoS 1 and
queued up to a bound, and in any case stored through the buffer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import gateway as gateway_pkg
from gateway.alarms.audit import AuditRecord, audit_for
from gateway.alarms.model import AlarmService, Transition
from gateway.driver import DeviceStatus
from gateway.errors import CommandRefused
from gateway.jsonsafe import finite
from gateway.mqtt.alarmtopics import STALE_SCAN_SECONDS, AlarmTopics
from gateway.mqtt.client import Message, MqttConnection, Will, client_id_base
from gateway.mqtt.commands import (
    MEMORY_BYTES,
    MEMORY_TTL,
    CommandMemory,
    body_id,
    execute,
    parse_body,
)
from gateway.mqtt.discovery import Discovery, settings_for
from gateway.mqtt.replies import ReplyPolicy
from gateway.plugin import DeadLetter
from gateway.problems import ProblemLog
from gateway.reading import Reading
from gateway.registry import register_service

log = logging.getLogger("iotgw.mqtt.ops")
_json_problems = ProblemLog(log)

DEAD_LETTER_RATE = 20.0
"""Dead letters published per second at most; the rest are only counted."""
DEAD_LETTER_COPY = 256
"""Bytes of a rejected payload copied into the dead letter."""
VALUES_INTERVAL = 0.2
"""Live values are coalesced: the latest reading per device and measurement is published
at most this often (a publish per accepted batch cost 17% of the gateway's CPU at 5,000
messages/s in bench/bench_mqtt.py: paho wakes its network thread on every publish)."""


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


AUDITED_VERBS = frozenset({"alarm"})


def _field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    return value if isinstance(value, str) else ""


def _dumps(obj: Any) -> bytes:
    """Standard JSON (RFC 8259) for every subscriber: Python would write NaN and
    Infinity bare, which other parsers refuse (an outside probe saw ``"id":Infinity``).
    A non-finite number that still gets here (a float register's read-back) is sent as
    null, logged once."""
    try:
        return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False).encode()
    except ValueError:
        _json_problems.report("non-finite", "a non-finite number (NaN or infinity) in an "
                              "ops-bus message was sent as null", level=logging.WARNING)
        return json.dumps(finite(obj), separators=(",", ":"), default=str,
                          allow_nan=False).encode()


class OpsBus:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        settings = gateway.config.model.mqtt
        self.settings = settings
        self.base = settings.base_topic
        self.states: dict[str, DeviceStatus] = {}
        self.counters: dict[str, int] = {}
        self._problems = ProblemLog(log)
        self._memory = CommandMemory(on_forced=self._forgotten_early)
        self._dl_tokens = DEAD_LETTER_RATE
        self._dl_stamp = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies = ReplyPolicy(self.base, settings.response_topics)
        self._latest: dict[str, dict[str, Reading]] = {}
        self._values_timer: asyncio.TimerHandle | None = None
        self.connection = MqttConnection(
            settings, f"{client_id_base(settings, gateway.config.model.gateway.id)}-ops",
            on_message=self._on_messages, persistent=False,
            will=Will(f"{self.base}/status", lambda: self._status("offline")),
            on_connected=self._on_connected, max_queued=5000)
        ha = settings_for(settings)
        self.discovery: Discovery | None = Discovery(
            ha, base=self.base, gateway_id=gateway.config.model.gateway.id,
            drivers={d.id: d.driver for d in gateway.config.model.devices}) \
            if ha.enabled else None
        self.alarm_topics = AlarmTopics(self.base, self.connection.publish, self.discovery)
        self._scan_timer: asyncio.TimerHandle | None = None
        self._alarms_attached: object | None = None
        self._reconciled_config: object | None = gateway.config
        events = settings.event_measurements
        self._is_event: Callable[[str], bool] = (
            (lambda m: m.endswith("_event")) if events is None else frozenset(events).__contains__)

    # -- wiring ------------------------------------------------------------------------

    def attach(self) -> None:
        self.gateway.add_state_listener(self._state_changed)
        self.gateway.pipeline.add_listener(self._readings)
        self.gateway.add_dead_letter_listener(self._dead_letter)
        self.gateway.add_alarms_listener(self._attach_alarms)

    def _attach_alarms(self, alarms: AlarmService) -> None:
        """Listen to the alarm engine: at start, or when a reload brings the first rules."""
        if self._alarms_attached is None:
            audit_for(self.gateway).add_listener(self._alarm_audit)
        self._alarms_attached = alarms
        alarms.add_transition_listener(self._alarm_transition)
        if self.connection.connected:
            task = asyncio.get_running_loop().create_task(self._republish_alarms())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """The connection and the stats loop share a fate: if the connection's task ends
        or the stats raise, ``run`` raises and the supervisor logs it and restarts the
        ops bus (never one half silently dead while the other looks fine). The offline
        status goes out before the connection is torn down on a clean stop."""
        runner = asyncio.create_task(self.connection.run(), name="mqtt:ops")
        try:
            while True:
                done, _ = await asyncio.wait({runner}, timeout=self.settings.stats_interval)
                if runner in done:
                    runner.result()  # the connection's own failure, with its traceback
                    raise RuntimeError("the ops-bus connection task ended")
                await self._publish_stats()
                self._reconcile_alarms()
        finally:
            if self.connection.connected:  # a clean stop says so; the will is for crashes
                self.connection.publish(f"{self.base}/status", self._status("offline"), 1, True)
                await asyncio.sleep(0.05)
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    # -- retained state ----------------------------------------------------------------

    def _status(self, state: str) -> bytes:
        model = self.gateway.config.model
        return _dumps({"state": state, "gateway": model.gateway.id, "site": model.gateway.site,
                       "version": gateway_pkg.__version__, "started": _iso(self.gateway.started),
                       "config": self.gateway.config.digest, "time": _iso(time.time())})

    async def _on_connected(self) -> None:
        conn = self.connection
        conn.publish(f"{self.base}/status", self._status("online"), 1, True)
        for device_id, ctx in self.gateway.devices.items():
            self._publish_state(device_id, self.states.get(device_id, ctx.status))
        if self.discovery is not None:
            for topic, payload in self.discovery.configs.items():
                conn.publish(topic, payload, 1, True, queue=False)
        # Retain as published: else the broker clears RETAIN on live delivery and a
        # retained command sent while we are connected would run (outside probe).
        conn.subscribe(f"{self.base}/cmd/+", 1, retain_as_published=True)
        await self._republish_alarms()

    # -- alarms ------------------------------------------------------------------------

    async def _republish_alarms(self) -> None:
        """After a connect: every alarm again, then a look at what the broker retained from
        earlier runs (alarms/+/+ and their HA configs) to clear alarms that are gone."""
        alarms = getattr(self.gateway, "alarms", None)
        if alarms is None:
            return
        await self.alarm_topics.republish(alarms.alarms())
        for topic_filter in self.alarm_topics.scan_filters:
            self.connection.subscribe(topic_filter, 1)
        if self._scan_timer is not None:
            self._scan_timer.cancel()
        self._scan_timer = asyncio.get_running_loop().call_later(
            STALE_SCAN_SECONDS, self._end_scan)

    def _end_scan(self) -> None:
        self._scan_timer = None
        for topic_filter in self.alarm_topics.scan_filters:
            self.connection.unsubscribe(topic_filter)

    def _reconcile_alarms(self) -> None:
        """After a reload (a new config object): clear the topics of alarms the engine
        dropped without a transition (normal alarms of removed rules). Only then: a
        snapshot of every alarm is not free with 100,000 of them."""
        alarms = getattr(self.gateway, "alarms", None)
        if self.gateway.config is self._reconciled_config:
            return
        self._reconciled_config = self.gateway.config
        if alarms is not None:
            self.alarm_topics.reconcile(alarms.alarms())

    def _alarm_transition(self, transition: Transition) -> None:
        self.alarm_topics.transition(transition)

    def _alarm_audit(self, record: AuditRecord) -> None:
        self.alarm_topics.audit(record)

    def _state_changed(self, device_id: str, status: DeviceStatus) -> None:
        self.states[device_id] = status
        self._publish_state(device_id, status)

    def _publish_state(self, device_id: str, status: DeviceStatus) -> None:
        body = {"state": str(status.state), "since": _iso(status.since),
                "last_seen": _iso(status.last_seen), "last_error": status.last_error}
        if status.condition is not None:
            body["condition"] = status.condition
        self.connection.publish(f"{self.base}/devices/{device_id}/state", _dumps(body), 1, True,
                                queue=False)

    # -- live values and events ----------------------------------------------------------

    def _readings(self, device_id: str, readings: Sequence[Reading]) -> None:
        latest: dict[str, Reading] | None = None
        for reading in readings:
            if self._is_event(reading.measurement):
                self.connection.publish(
                    f"{self.base}/events/{reading.measurement}/{device_id}",
                    _dumps(self._reading_json(reading)), 1)
            else:
                if latest is None:
                    latest = self._latest.setdefault(device_id, {})
                latest[reading.measurement] = reading
                if self.discovery is not None:
                    for topic, payload in self.discovery.observe(device_id, reading):
                        # not queued: every config is re-sent by _on_connected anyway
                        self.connection.publish(topic, payload, 1, True, queue=False)
        if latest is not None and self._values_timer is None:
            self._values_timer = asyncio.get_running_loop().call_later(
                VALUES_INTERVAL, self._publish_values)

    def _publish_values(self) -> None:
        self._values_timer = None
        pending, self._latest = self._latest, {}
        for device_id, latest in pending.items():
            for reading in latest.values():
                if not self.connection.publish(f"{self.base}/devices/{device_id}/values",
                                               _dumps(self._reading_json(reading)), 0,
                                               queue=False):
                    self._count("values_dropped")

    @staticmethod
    def _reading_json(reading: Reading) -> dict[str, Any]:
        tags = {k: v for k, v in reading.tags.items() if k not in ("site", "gateway")}
        return {"measurement": reading.measurement, "time_ns": reading.time_ns,
                "tags": tags, "fields": dict(reading.fields)}

    # -- dead letters --------------------------------------------------------------------

    def _dead_letter(self, letter: DeadLetter) -> None:
        payload = letter.payload
        self._count("dead_letters")
        now = time.monotonic()
        self._dl_tokens = min(DEAD_LETTER_RATE,
                              self._dl_tokens + (now - self._dl_stamp) * DEAD_LETTER_RATE)
        self._dl_stamp = now
        if self._dl_tokens < 1:
            self._count("dead_letters_suppressed")
            return
        self._dl_tokens -= 1
        copy = payload[:DEAD_LETTER_COPY]
        try:
            text, encoding = copy.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(copy).decode(), "base64"
        self.connection.publish(f"{self.base}/errors", _dumps({
            "device": letter.device_id, "reason": letter.reason, "topic": letter.source,
            "size": len(payload),
            "truncated": len(payload) > DEAD_LETTER_COPY, "encoding": encoding,
            "payload": text, "time": _iso(time.time())}), 0, queue=False)

    # -- stats ---------------------------------------------------------------------------

    async def _publish_stats(self) -> None:
        stats = self.gateway.stats
        try:
            buffer = await self.gateway.buffer.stats()
            depth = {"lines": buffer.depth_lines, "bytes": buffer.bytes_held,
                     "sinks": {n: {"lag_lines": s.lag_lines} for n, s in buffer.sinks.items()}}
        except Exception as exc:  # stats must not kill the ops bus
            depth = {"error": str(exc)}
        body = {
            "time": _iso(time.time()), "readings_in": stats.readings_in,
            "readings_committed": stats.readings_committed, "dropped": dict(stats.dropped),
            "buffer": depth,
            "sinks": {n: {"state": s.state, "sent_lines": s.sent_lines, "errors": s.errors,
                          "last_error": s.last_error} for n, s in stats.sinks.items()},
            "devices": {i: dict(c.status.counters) for i, c in self.gateway.devices.items()
                        if c.status.counters},
            "ops": {**self.counters, "queued_dropped": self.connection.stats.queued_dropped,
                    "publish_refused": self.connection.stats.publish_refused,
                    "network_failures": self.connection.stats.network_failures,
                    "alarm_publish_failed": dict(self.alarm_topics.failed)},
        }
        self.connection.publish(f"{self.base}/stats", _dumps(body), 0, queue=False)

    # -- commands ------------------------------------------------------------------------

    def _on_messages(self, batch: list[Message]) -> None:
        prefix = f"{self.base}/cmd/"
        for message in batch:
            if message.retain and self.alarm_topics.scanning() and \
                    self.alarm_topics.retained_seen(message.topic, bytes(message.payload)):
                continue
            if message.retain and not message.payload:
                continue  # a retained message deleted: the broker's doing, not a command
            if message.topic.startswith(prefix) and "/" not in message.topic[len(prefix):]:
                task = asyncio.create_task(self._command(message.topic[len(prefix):], message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _command(self, verb: str, message: Message) -> None:
        """One command; whatever goes wrong costs this command only, logged once per kind."""
        try:
            await self._answer(verb, message)
        except Exception as exc:
            self._count("command_errors")
            self._problems.report(f"command:{type(exc).__name__}",
                                  f"command {verb!r} could not be answered: "
                                  f"{type(exc).__name__}: {exc}", exc_info=exc)

    async def _answer(self, verb: str, message: Message) -> None:
        digest = hashlib.sha256(message.payload).hexdigest()[:16]
        body: dict[str, Any] = {}
        read = False
        key: tuple[str, str] | None = None
        client = dict(message.user_properties).get("client", "unknown")
        topic = f"{self.base}/cmd/{verb}/result"
        try:
            topic = self._reply_topic(message.response_topic) or topic
            if message.retain:
                raise CommandRefused("retained commands are ignored (they would run again "
                                     "after every reconnect)")
            body = parse_body(message.payload)
            read = True
            client = str(body.get("client", client))
            key = (verb, "id:" + json.dumps(body["id"], sort_keys=True)) if "id" in body \
                else (verb, "sha256:" + digest)
            earlier = self._memory.first(key) if "id" in body or message.dup else None
            if earlier is not None:
                await self._duplicate(verb, body, client, message, topic,
                                      json.loads(await earlier))
                return
            answer: dict[str, Any] = {"ok": True, "result": await execute(self.gateway, verb,
                                                                         body)}
        except CommandRefused as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a failing driver is an answer
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        answer = {"verb": verb, **answer}
        if not read:  # refused before or while the body was read: still name the command
            body = body_id(message.payload)
        if "id" in body:
            answer["id"] = body["id"]
        payload = _dumps(answer)
        if key is not None:
            self._memory.remember(key, payload)
        self._count("commands_ok" if answer["ok"] else "commands_refused")
        self._audit(verb, body, client, answer)
        if verb not in AUDITED_VERBS:  # those have their audit line: one line a command
            log.info("command %s from %s: %s", verb, client,
                     "ok" if answer["ok"] else f"refused: {answer['error']}",
                     extra={"client": client, "topic": message.topic, "body_sha256": digest,
                            "result": "ok" if answer["ok"] else answer["error"]})
        self.connection.publish(topic, payload, 1, queue=False,
                                correlation_data=message.correlation_data)

    def _forgotten_early(self, age: float) -> None:
        """The command memory's bound made it forget a command before its 10 minutes: a
        repeat of that one would run again. Counted; logged once."""
        self._count("commands_forgotten_early")
        self._problems.report("command_memory", (
            f"more commands than the duplicate memory holds ({MEMORY_BYTES // 2**20} MiB of "
            f"answers): one was forgotten {age:.0f} s after it ran instead of "
            f"{MEMORY_TTL:.0f} s, so a repeat of it would run again (later ones are counted "
            "in stats ops.commands_forgotten_early)"), level=logging.WARNING,
            kind="forced")

    async def _duplicate(self, verb: str, body: dict[str, Any], client: str, message: Message,
                         topic: str, first: dict[str, Any]) -> None:
        """A command seen before (same id, or a DUP redelivery): answered, not run again."""
        self._count("commands_duplicate")
        self._audit(verb, body, client, {**first, "duplicate": True})
        if verb not in AUDITED_VERBS:
            log.info("command %s from %s: duplicate, not run again (first answer: %s)", verb,
                     client, "ok" if first.get("ok") else "refused",
                     extra={"client": client, "topic": message.topic, "result": "duplicate"})
        self.connection.publish(topic, _dumps({**first, "duplicate": True}), 1, queue=False,
                                correlation_data=message.correlation_data)

    def _audit(self, verb: str, body: dict[str, Any], client: str,
               answer: dict[str, Any]) -> None:
        """Alarm commands are audited (ok or refused, duplicates too): who acknowledged or
        shelved what is a record an operator can be asked for (ISA-18.2)."""
        if verb not in AUDITED_VERBS:
            return
        detail: dict[str, Any] = {k: body[k] for k in ("action", "for", "id")
                                  if isinstance(body.get(k), str | int | float)}
        detail["client"] = client
        if answer["ok"]:
            result = answer["result"]
            detail.update(state=result.get("state"), seq=result.get("seq"))
        else:
            detail["error"] = answer["error"]
        if answer.get("duplicate"):
            detail["duplicate"] = True
        audit_for(self.gateway).record(AuditRecord(
            "command", _field(body, "rule"), _field(body, "device"), bool(answer["ok"]),
            detail=detail))

    def _reply_topic(self, requested: str | None) -> str | None:
        """The requester's response topic, when the policy allows it; a refused one
        refuses the command (it is not executed), logged once per kind and counted."""
        if requested is None:
            return None
        why = self._replies.refusal(requested)
        if why is None:
            return requested
        self._count("response_topic_refused")
        self._problems.report(f"response_topic:{why}", (
            f"command refused: its MQTT 5 response topic {why} (the result goes to "
            f"{self.base}/cmd/<verb>/result; later refusals of this kind are counted in "
            "stats ops.response_topic_refused)"), detail=f"first: {requested!r}")
        raise CommandRefused(f"response topic {requested!r} refused: it {why}")


def ops_bus_factory(gateway: Any) -> Callable[[], Any] | None:
    if gateway.config.model.mqtt is None:
        return None
    ops = OpsBus(gateway)
    ops.attach()
    return ops.run


register_service("ops-bus", ops_bus_factory)
