"""The alarm topics of the ops bus: retained state per alarm, transitions and the audit
trail on ``alarms/events``, and the removal of alarms that no longer exist.

* ``<base>/alarms/<rule>/<device>``, QoS 1, retained: the alarm as it stands (what a panel
  shows after it connects). Published on every transition and again after every connect.
* ``<base>/alarms/events``, QoS 1, not retained, queued while the broker is away: one
  message per transition (``"type": "transition"``) and per audit record (``"type":
  "command"`` / ``"action"``).

A retained topic outlives the alarm: a rule removed from the config (reload, or a restart
with another config) would leave a panel showing its last state for ever. So the alarms
with a retained topic are compared with the engine's at the stats tick after a reload
and after each connect (a removed rule's active alarm is cleared at its ``removed``
transition); and for STALE_SCAN_SECONDS after a
connect the gateway subscribes to ``alarms/+/+`` (and its Home Assistant alarm configs) to
read what the broker retained from earlier runs, clearing (empty retained message) every
alarm the engine does not have.

Each publish stands alone: one the client refuses (a topic or payload paho will not
send, a value JSON cannot carry) is counted in :attr:`AlarmTopics.failed` by kind and
logged once per kind, and the others of the same transition still go out (a refused
retained state used to take the transition's event down with it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from gateway import jsonsafe
from gateway.alarms.audit import AuditRecord
from gateway.alarms.model import AlarmKey, AlarmSnapshot, Transition
from gateway.jsonsafe import finite
from gateway.mqtt.discovery import Discovery
from gateway.problems import ProblemLog

log = logging.getLogger("iotgw.mqtt.alarms")

Publish = Callable[..., bool]
"""``MqttConnection.publish(topic, payload, qos, retain, queue=...)``."""
GONE_CAUSES = frozenset({"removed"})
"""Transitions after which the alarm no longer exists (the engine drops it)."""
REPUBLISH_SLICE = 500
STALE_SCAN_SECONDS = 10.0
"""How long after a connect retained ``alarms/+/+`` messages are taken as left over."""


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def _dumps(obj: Any) -> bytes:
    """Strict JSON: NaN and Infinity are refused (ValueError), not written as the
    non-standard tokens other parsers reject; the bodies map them to null first."""
    return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False).encode()


def state_body(alarm: AlarmSnapshot) -> dict[str, Any]:
    """The retained payload (docs/topics.md lists the keys)."""
    return {"rule": alarm.key.rule, "device": alarm.key.device, "alarm_id": alarm.alarm_id,
            "state": str(alarm.state), "active": alarm.active, "acked": alarm.acked,
            "severity": alarm.severity,
            # seq 0: no transition yet (a pending on-delay), so no state change to date
            "since": _iso(alarm.since) if alarm.seq else None, "value": finite(alarm.value),
            "message": alarm.message, "seq": alarm.seq, "latched": alarm.latched,
            "chatter": alarm.chatter, "shelved_until": _iso(alarm.shelved_until),
            "tags": dict(alarm.tags)}


def event_body(transition: Transition) -> dict[str, Any]:
    """A transition on ``alarms/events``; an alarm named by a shortened count key value
    (gateway.alarms.model.bounded_name) carries that value as ``key_value``."""
    alarm = transition.alarm
    body = {"type": "transition", "cause": transition.cause,
            "previous": str(transition.previous), "at": _iso(transition.at),
            "client": transition.client, **state_body(alarm)}
    if alarm.key_value is not None:
        body["key_value"] = alarm.key_value
    return body


def audit_body(record: AuditRecord) -> dict[str, Any]:
    return {**record.as_json(), "at": _iso(record.at)}


_LEVEL_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"})


def topic_level(name: str) -> str:
    """An alarm's rule or device name as one topic level. Rule and device ids cannot hold
    ``/``, ``+``, ``#`` or NUL, but an alarm named by a count key (``key: reader``) is
    named by a value from a reading, which can: those (and ``%``) are percent-encoded, so
    the name stays one level and paho does not refuse the topic."""
    return name.translate(_LEVEL_ESCAPES)


class AlarmTopics:
    def __init__(self, base: str, publish: Publish, discovery: Discovery | None) -> None:
        self.base = base
        self.events_topic = f"{base}/alarms/events"
        self._publish = publish
        self.discovery = discovery
        self.published: set[AlarmKey] = set()
        """Alarms with a retained state topic (as far as this process knows)."""
        self._scan_until = 0.0
        self._fresh: set[AlarmKey] | None = None
        """While :meth:`republish` runs: alarms that had a transition since it began."""
        self.cleared = 0
        """Retained alarm topics removed because their alarm no longer exists."""
        self.failed: Counter[str] = Counter()
        """Publishes the client refused, by kind (state, event, audit, config, clear)."""
        self._problems = ProblemLog(log)

    def topic(self, key: AlarmKey) -> str:
        return f"{self.base}/alarms/{topic_level(key.rule)}/{topic_level(key.device)}"

    @property
    def scan_filters(self) -> list[str]:
        """Subscribed right after a connect, to find retained leftovers."""
        filters = [f"{self.base}/alarms/+/+"]
        if self.discovery is not None:
            filters.append(self.discovery.alarm_config_filter)
        return filters

    # -- the engine's side ---------------------------------------------------------------

    async def republish(self, alarms: Iterable[AlarmSnapshot]) -> None:
        """After a connect: every alarm's state (and HA config) again, stale ones cleared.
        In slices of REPUBLISH_SLICE with the loop let through between them (100,000
        alarms are seconds of JSON); an alarm that changes meanwhile is published by its
        transition and skipped here, so an older snapshot never overwrites a newer one.
        Retained leftovers arriving in the next STALE_SCAN_SECONDS are judged too."""
        current = list(alarms)
        fresh: set[AlarmKey] = set()
        self._fresh = fresh
        try:
            for start in range(0, len(current), REPUBLISH_SLICE):
                if start:
                    await asyncio.sleep(0)
                for alarm in current[start:start + REPUBLISH_SLICE]:
                    if alarm.key not in fresh:
                        self._announce(alarm)
                        self._state(alarm)
        finally:
            self._fresh = None
        keep = {a.key for a in current} | (fresh & self.published)  # new ones meanwhile
        for key in self.published - keep:
            self._clear(key)
        self._scan_until = time.monotonic() + STALE_SCAN_SECONDS

    def transition(self, transition: Transition) -> None:
        alarm = transition.alarm
        if self._fresh is not None:
            self._fresh.add(alarm.key)
        if transition.cause in GONE_CAUSES:  # its rule was removed: the alarm is gone
            self._send("event", self.events_topic, lambda: event_body(transition), True)
            self._clear(alarm.key)
            return
        if alarm.key not in self.published:
            self._announce(alarm)
        self._state(alarm)
        self._send("event", self.events_topic, lambda: event_body(transition), True)

    def audit(self, record: AuditRecord) -> None:
        self._send("audit", self.events_topic, lambda: audit_body(record), True)

    def reconcile(self, alarms: Iterable[AlarmSnapshot]) -> None:
        """Clear the retained topics of alarms the engine no longer has."""
        current = {a.key for a in alarms}
        for key in self.published - current:
            self._clear(key)

    # -- what the broker still holds -----------------------------------------------------

    def scanning(self) -> bool:
        return time.monotonic() < self._scan_until

    def retained_seen(self, topic: str, payload: bytes) -> bool:
        """A retained message delivered by the scan subscription: cleared when no alarm of
        that (rule, device) exists (the current ones were all published by
        :meth:`republish`). True when ``topic`` was an alarm topic at all."""
        key = self._key_of(topic)
        if key is not None:
            if key not in self.published:
                self._clear(key)
            return True
        if self.discovery is None or not self.discovery.is_alarm_config(topic):
            return False
        try:  # a Home Assistant config names its alarm by its state topic
            key = self._key_of(str(jsonsafe.parse(payload).get("state_topic", "")))
        except (jsonsafe.JsonRefused, AttributeError):  # anyone may have retained it
            key = None
        if key is not None and key not in self.published:
            self._send("clear", topic, lambda: b"", True, retain=True)
            self.cleared += 1
        return True

    def _key_of(self, topic: str) -> AlarmKey | None:
        prefix = f"{self.base}/alarms/"
        if topic.startswith(prefix):
            rest = topic[len(prefix):].split("/")
            if len(rest) == 2 and rest[0] and rest[1]:
                return AlarmKey(unquote(rest[0]), unquote(rest[1]))
        return None

    # -- publishing ----------------------------------------------------------------------

    def _send(self, kind: str, topic: str, body: Callable[[], Any], queue: bool, *,
              retain: bool = False) -> bool:
        """Publish one message (QoS 1); ``body`` is bytes as they are, or an object for
        JSON, built here so that a value JSON cannot carry fails this message only. A
        refusal (paho: a topic over 65,535 bytes, a payload too large ...) is counted by
        kind and logged once per kind, and the caller goes on with its other messages."""
        try:
            payload = body()
            data = payload if isinstance(payload, bytes) else _dumps(payload)
            return self._publish(topic, data, 1, retain, queue=queue)
        except ValueError as exc:
            self.failed[kind] += 1
            self._problems.report(
                f"publish:{kind}", f"alarm {kind} not published: {exc} (counted; logged once)",
                detail=f"topic {topic[:200]!r}")
            return False

    def _state(self, alarm: AlarmSnapshot) -> None:
        self.published.add(alarm.key)
        # not queued: every state is re-sent on connect anyway
        self._send("state", self.topic(alarm.key), lambda: state_body(alarm), False,
                   retain=True)

    def _announce(self, alarm: AlarmSnapshot) -> None:
        discovery = self.discovery
        if discovery is not None:
            topic, payload = discovery.alarm_config(alarm, self.topic(alarm.key))
            self._send("config", topic, lambda: payload, False, retain=True)

    def _clear(self, key: AlarmKey) -> None:
        self.published.discard(key)
        self.cleared += 1
        self._send("clear", self.topic(key), lambda: b"", True, retain=True)
        if self.discovery is not None:
            self._send("clear", self.discovery.alarm_forget(key), lambda: b"", True,
                       retain=True)
