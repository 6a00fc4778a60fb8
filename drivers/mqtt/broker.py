"""One broker connection shared by every mqtt device (``SharedResources`` key
``("mqtt", "devices")``), separate from the ops-bus connection: the shared-connection
pattern of :mod:`gateway.plugin`, on the typed :class:`~gateway.plugin.GatewayHandle`.

Why separate: (1) this session is persistent so camera events published while the
gateway restarts are delivered when it returns, while the ops session is clean so an
"open the gate" command sent during an outage is *not* executed an hour later;
(2) QoS 1 events wait for the buffer commit before their PUBACK, and the broker sends
only ``receive_maximum`` unacknowledged messages: on a shared connection a flood of
events would hold commands back.

Messages arrive in bursts from the paho thread. A burst is decoded at once, grouped per
device, submitted to the pipeline, and one task per burst waits for the commit and then
acknowledges the burst's QoS 1 messages. Rejected, filtered, rate-limited and unrouted
messages are acknowledged too: they are answered (counted, dead-lettered), not retried.
A refusal is also logged, once per device and kind (``ProblemLog``, with a summary of the
repeats every five minutes), as camera_push and event_stream do: a device sending only
bad payloads must show in the log, not only in counters.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

from drivers.mqtt.mapping import Filtered, Mapper, Rejected
from gateway.config.models import MqttSection
from gateway.driver import DeviceContext
from gateway.errors import DeviceError
from gateway.mqtt.client import Message, MqttConnection, client_id_base
from gateway.plugin import DeadLetter, GatewayHandle
from gateway.problems import ProblemLog
from gateway.reading import Reading

log = logging.getLogger("iotgw.mqtt.devices")
GATHER = 0.005
"""Seconds a burst of device messages may grow before it is decoded and submitted (a
wake-up, a pipeline submit and a commit-wait task per burst instead of per message)."""
RECENT = 20_000
"""Messages remembered to recognise a broker's DUP redelivery of something committed."""
UNSUBSCRIBE_DELAY = 1.0
"""Seconds between a device detaching and the unsubscribe of filters nobody wants: at a
gateway stop the connection closes within them, so the persistent session keeps its
subscriptions (see ``DeviceBroker.detach``)."""
CONNECTION_TASK = "mqtt:devices"
INTAKE_TASK = "mqtt:devices-intake"
ROUTES = 4096
"""Distinct topics whose matching devices and captured tags are remembered (a compound
has a few hundred topics; matching every filter per message was a hot spot)."""
SUMMARY_EVERY = 300.0
"""Seconds between the summary lines of a refusal that keeps repeating."""


@dataclass
class TokenBucket:
    rate: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        now = time.monotonic()
        burst = max(1.0, self.rate)
        self.tokens = min(burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Decoded:
    """One device's readings from a burst, each with the message it came from (to
    dead-letter exactly that message if the pipeline refuses its reading)."""

    readings: list[Reading] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    attachments: dict[str, Attachment] = field(default_factory=dict)

    def add(self, att: Attachment, reading: Reading, message: Message) -> None:
        self.readings.append(reading)
        self.messages.append(message)
        self.attachments[att.ctx.device_id] = att


class Attachment:
    """A device as the broker sees it: its mapper, its context, its limits."""

    def __init__(self, mapper: Mapper, ctx: DeviceContext) -> None:
        self.mapper = mapper
        self.ctx = ctx
        rate = mapper.config.rate_limit
        self.bucket = TokenBucket(rate, tokens=max(1.0, rate)) if rate else None


class DeviceBroker:
    def __init__(self, gateway: GatewayHandle) -> None:
        settings = gateway.section("mqtt", MqttSection)
        if settings is None:
            raise DeviceError("the mqtt driver needs the gateway's mqtt: section")
        self.gateway = gateway
        self.connection = MqttConnection(
            settings, f"{client_id_base(settings, gateway.gateway_id)}-dev",
            on_message=self._on_messages, persistent=True, manual_ack=True,
            receive_maximum=10_000, gather=GATHER)
        self.attachments: list[Attachment] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._recent: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._routes: dict[str, list[tuple[Attachment, dict[str, str]]]] = {}
        self._intake: asyncio.Queue[list[Message]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self.failure: str | None = None
        """Why a supervised task of this connection last failed, until it recovers."""
        self._last_arrival = 0
        self._unsubscribe_later: asyncio.TimerHandle | None = None
        self.problems = ProblemLog(log)
        """Refusals, logged once per device and kind (the driver's field-level ones too)."""

    @classmethod
    async def create(cls, gateway: GatewayHandle) -> DeviceBroker:
        """Start the connection and the intake worker under the gateway's supervisor: a
        failure is logged with its traceback, counted, shown in readiness and in every
        attached device's state, and the task restarts."""
        broker = cls(gateway)
        for name, run in ((CONNECTION_TASK, broker.connection.run),
                          (INTAKE_TASK, broker._work)):
            gateway.tasks.start(name, run, on_failure=broker._task_failed,
                                on_recovered=broker._task_recovered)
        return broker

    def _task_failed(self, exc: BaseException) -> None:
        self.failure = f"mqtt device intake failed: {type(exc).__name__}: {exc}"
        self.counters["task_failures"] += 1

    def _task_recovered(self) -> None:
        self.failure = None

    async def close(self) -> None:
        if self._unsubscribe_later is not None:  # stopping: the session keeps them
            self._unsubscribe_later.cancel()
        await self.gateway.tasks.stop([INTAKE_TASK])
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.gateway.tasks.stop([CONNECTION_TASK])

    def attach(self, attachment: Attachment) -> None:
        self.attachments.append(attachment)
        self._routes.clear()
        for pattern in attachment.mapper.patterns:
            self.connection.subscribe(pattern.filter, attachment.mapper.config.qos)

    def detach(self, attachment: Attachment) -> None:
        """Stop routing to a device; its filters no other device wants are unsubscribed
        a moment later, and only if the connection is still open then.

        At a gateway stop every device detaches and then the connection closes: an
        UNSUBSCRIBE sent then made the broker drop the persistent session's subscription,
        so everything published while the gateway was down (or starting again in place)
        was lost (an outside probe: ~45 of ~500 QoS 1 messages on every stop and start).
        A device removed by a reload, while the gateway runs on, still gets its filters
        unsubscribed."""
        self.attachments.remove(attachment)
        self._routes.clear()
        if self._unsubscribe_later is None:
            self._unsubscribe_later = asyncio.get_running_loop().call_later(
                UNSUBSCRIBE_DELAY, self._unsubscribe_unwanted)

    def _unsubscribe_unwanted(self) -> None:
        self._unsubscribe_later = None
        wanted = {p.filter for a in self.attachments for p in a.mapper.patterns}
        for topic_filter in self.connection.subscriptions():
            if topic_filter not in wanted:
                self.connection.unsubscribe(topic_filter)

    # -- intake ----------------------------------------------------------------------

    def _on_messages(self, batch: list[Message]) -> None:
        self._intake.put_nowait(batch)

    async def _work(self) -> None:
        while True:
            batch = await self._intake.get()
            while not self._intake.empty() and len(batch) < 5000:
                batch.extend(self._intake.get_nowait())
            try:
                last = await self._submit(self._decode(batch))
            except Exception as exc:
                # Not a message's fault (decoding and submitting isolate each message):
                # a bug. The batch stays unacknowledged, so the broker redelivers it after
                # the next reconnect, and the supervisor restarts this task.
                raise RuntimeError(f"intake of {len(batch)} messages failed: {exc}") from exc
            task = asyncio.create_task(self._ack_after_commit(last, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _submit(self, groups: dict[str, Decoded]) -> str | None:
        """Submit each device's readings; returns the last device submitted to (whose
        commit covers everything before it). A group the pipeline refuses is retried a
        reading at a time, so a poison message costs that message only: it is counted,
        dead-lettered and acknowledged like a rejected payload."""
        last = None
        for device_id, decoded in groups.items():
            try:
                await self.gateway.submit(device_id, decoded.readings)
            except Exception:
                for reading, message in zip(decoded.readings, decoded.messages, strict=True):
                    try:
                        await self.gateway.submit(device_id, (reading,))
                    except Exception as exc:
                        self._poisoned(decoded.attachments[device_id], message, exc)
            last = device_id
        return last

    def _poisoned(self, att: Attachment, message: Message, exc: Exception) -> None:
        self.counters["poison"] += 1
        self._refused(att, "poison", f"{type(exc).__name__}: {exc}", message)

    def _refused(self, att: Attachment, reason: str, detail: str, message: Message,
                 level: int = logging.WARNING) -> None:
        """A message this device does not take: counted, logged once per (device,
        reason), dead-lettered. The log line leaves out the detail (it may quote the
        payload) for a device that pseudonymises fields."""
        ctx = att.ctx
        ctx.count(reason)
        shown = "" if att.mapper.config.pseudonymize else detail[:200]
        self.problems.report(
            f"{reason}:{ctx.device_id}",
            f"mqtt device {ctx.device_id}: message on {message.topic[:200]!r} refused "
            f"({reason})", detail=shown, level=level, summary_every=SUMMARY_EVERY,
            kind=reason)
        self.gateway.dead_letter(DeadLetter(
            ctx.device_id, f"{reason}: {detail}"[:300] if detail else reason,
            message.payload, message.topic))

    def field_problems(self, att: Attachment, counts: dict[str, int]) -> None:
        """Field-level problems of a device's messages (a field dropped for its type or
        time; the reading kept): counted, and logged once per (device, reason)."""
        ctx = att.ctx
        for reason, count in counts.items():
            ctx.count(reason, count)
            self.problems.report(
                f"{reason}:{ctx.device_id}",
                f"mqtt device {ctx.device_id}: a field dropped from its messages ({reason})",
                level=logging.WARNING, summary_every=SUMMARY_EVERY, kind=reason)

    async def _ack_after_commit(self, device_id: str | None, batch: list[Message]) -> None:
        if device_id is not None:
            await self.gateway.wait_committed()
        self.connection.ack_all(batch)

    def _decode(self, batch: list[Message]) -> dict[str, Decoded]:
        groups: dict[str, Decoded] = {}
        # Each message its own arrival time, strictly increasing across bursts: a burst
        # used to share one, and a store keeps one point per series and timestamp, so
        # InfluxDB kept 1 of 200 messages that carry no time of their own.
        arrival = max(time.time_ns(), self._last_arrival + 1)
        recent = self._recent
        for message in batch:
            arrival += 1
            try:
                key = hash((message.topic, message.payload))
                if message.dup and key in recent:
                    self.counters["duplicate_redelivery"] += 1
                    continue
                routes = self._routes.get(message.topic)
                if routes is None:
                    routes = self._route(message.topic)
            except Exception as exc:  # routing bug: one message, not the stream
                self.counters["route_error"] += 1
                self.problems.report("route_error", f"mqtt devices: routing a message on "
                                     f"{message.topic[:200]!r} failed",
                                     exc_info=exc, summary_every=SUMMARY_EVERY,
                                     kind="route_error")
                self.gateway.dead_letter(DeadLetter(
                    "-", f"route_error: {type(exc).__name__}: {exc}", message.payload,
                    message.topic))
                continue
            for att, topic_tags in routes:
                reading = self._one(att, topic_tags, message, arrival)
                if reading is not None:
                    decoded = groups.get(att.ctx.device_id)
                    if decoded is None:
                        decoded = groups[att.ctx.device_id] = Decoded()
                    decoded.add(att, reading, message)
            if not routes:
                self.counters["unrouted"] += 1
            if message.qos:
                recent[key] = None
                if len(recent) > RECENT:
                    recent.popitem(last=False)
        self._last_arrival = arrival
        return groups

    def _route(self, topic: str) -> list[tuple[Attachment, dict[str, str]]]:
        """The devices whose filters match ``topic``, with the tags captured for each."""
        routes = []
        for att in self.attachments:
            topic_tags = att.mapper.topic_tags(topic)
            if topic_tags is not None:
                routes.append((att, topic_tags))
        if len(self._routes) >= ROUTES:
            self._routes.clear()
        self._routes[topic] = routes
        return routes

    def _one(self, att: Attachment, topic_tags: dict[str, str], message: Message,
             arrival: int) -> Reading | None:
        ctx = att.ctx
        try:
            if att.bucket is not None and not att.bucket.take():
                raise Rejected("rate_limited")
            reading = att.mapper.decode(topic_tags, message.payload, arrival)
        except Filtered:
            ctx.count("filtered")
            return None
        except Rejected as exc:
            self._refused(att, exc.reason, exc.detail, message)
            return None
        except Exception as exc:  # a mapping bug must cost one message, not the device
            self._refused(att, "decode_error", f"{type(exc).__name__}: {exc}", message,
                          level=logging.ERROR)
            return None
        ctx.status.last_seen = arrival / 1e9
        return reading
