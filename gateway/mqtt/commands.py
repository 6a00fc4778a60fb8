"""Ops commands: ``cmd/<verb>`` with a JSON object body -> a JSON result.

A table of verbs, each with the body keys it needs. Anything unexpected (unknown verb,
bad JSON, missing keys, unknown device, point not in ``allow_write``, a driver that cannot
write) becomes CommandRefused with a reason; the device is never touched in those cases
because validation happens before any driver call, and the allow-list check lives in
``Gateway.write_point`` itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.alarms.model import AlarmAction, AlarmCommand, AlarmCommandRefused
from gateway.config.types import parse_duration
from gateway.errors import CommandRefused

MAX_BODY = 16 * 1024
SHELVE_MAX = 30 * 86400.0
"""The longest timed shelve (``for``): an alarm hidden longer is one nobody remembers."""


@dataclass(frozen=True)
class Verb:
    needs: tuple[str, ...]
    run: Callable[[Any, dict[str, Any]], Awaitable[Any]]
    doc: str


RELOAD_PROBLEMS_SHOWN = 5
"""Problems of a rejected config in the answer (all of them are in the log)."""


async def _reload(gateway: Any, body: dict[str, Any]) -> Any:
    if not await gateway.reload():
        problems = list(gateway.reload_problems)
        shown = "; ".join(p[:300] for p in problems[:RELOAD_PROBLEMS_SHOWN])
        more = len(problems) - RELOAD_PROBLEMS_SHOWN
        raise CommandRefused("config rejected, the running config stays"
                             + (f": {shown}" if shown else "")
                             + (f" (and {more} more in the log)" if more > 0 else ""))
    if gateway.restart is not None:  # applied by starting again in place
        return {"config": gateway.restart.config_digest,
                "restarting": list(gateway.restart.reasons)}
    return {"config": gateway.config.digest}


async def _poll(gateway: Any, body: dict[str, Any]) -> Any:
    await gateway.poll_device(_text(body, "device"))
    return {"device": body["device"]}


async def _write(gateway: Any, body: dict[str, Any]) -> Any:
    value = body["value"]
    if not isinstance(value, bool | int | float | str) or value is None:
        raise CommandRefused("value must be a number, a boolean or a string")
    if isinstance(value, float) and not math.isfinite(value):
        # A float register would be written NaN, an integer one fail to encode.
        raise CommandRefused(f"value must be a finite number, not {value!r}")
    result = await gateway.write_point(_text(body, "device"), _text(body, "point"), value)
    return {"device": body["device"], "point": body["point"], "value": value, **(result or {})}


async def _alarm(gateway: Any, body: dict[str, Any]) -> Any:
    service = getattr(gateway, "alarms", None)
    if service is None:
        raise CommandRefused("this gateway has no alarm rules")
    command = alarm_command(body)
    try:
        alarm = await service.command(command)
    except AlarmCommandRefused as exc:
        raise CommandRefused(str(exc)) from None
    return {"action": str(command.action), "rule": command.rule, "device": command.device,
            "state": str(alarm.state), "seq": alarm.seq, "alarm_id": alarm.alarm_id,
            "shelved_until": alarm.shelved_until}


def alarm_command(body: dict[str, Any]) -> AlarmCommand:
    """``cmd/alarm``'s body as an AlarmCommand; anything else is refused with the reason."""
    text = body["action"]
    try:
        action = AlarmAction(text)
    except ValueError:
        raise CommandRefused(f"unknown action {text!r}; known: "
                             f"{', '.join(a.value for a in AlarmAction)}") from None
    duration: float | None = None
    if body.get("for") is not None:
        if action is not AlarmAction.SHELVE:
            raise CommandRefused("'for' is only for shelve (a timed shelve)")
        try:
            duration = parse_duration(body["for"])
        except ValueError as exc:
            raise CommandRefused(f"for: {exc}") from None
        if not 0 < duration <= SHELVE_MAX:
            raise CommandRefused(f"for must be more than 0 and at most {SHELVE_MAX / 86400:g} "
                                 "days")
    return AlarmCommand(action, _text(body, "rule"), _text(body, "device"),
                        _text(body, "client"), duration)


VERBS: dict[str, Verb] = {
    "reload": Verb((), _reload, "re-read the config file; answers the new config hash"),
    "poll": Verb(("device",), _poll, "read a device now"),
    "write": Verb(("device", "point", "value"), _write, "write an allow-listed point"),
    "alarm": Verb(("action", "rule", "device", "client"), _alarm,
                  "ack / shelve / unshelve / reset / out_of_service / in_service an alarm"),
}


def _text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise CommandRefused(f"{key} must be a non-empty string")
    return value


class _NonFinite(NamedTuple):
    """What a body is read with in place of ``NaN``, ``Infinity`` (Python's JSON
    extensions) or a number that overflows a float (``1e999``): such a body is refused,
    so nothing non-finite reaches a device, an audit record or an answer (found by an
    outside probe: ``"id": Infinity`` was echoed as ``Infinity``, which no standard JSON
    parser reads); the rest of it can still be read (the ``id`` of the refusal)."""

    text: str


def _float_or_marker(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text if len(text) <= 40
                                                         else text[:40] + "...")


def _read(payload: bytes | bytearray) -> Any:
    """The JSON in ``payload``, non-finite numbers as :class:`_NonFinite` markers; raises
    ValueError or RecursionError for what is not JSON."""
    return json.loads(payload, parse_constant=_NonFinite, parse_float=_float_or_marker)


def _non_finite_in(value: Any) -> _NonFinite | None:
    """The first marker in ``value`` (walked without recursion: bodies may nest deep)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, _NonFinite):
            return item
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


def parse_body(payload: bytes | bytearray) -> dict[str, Any]:
    if len(payload) > MAX_BODY:
        raise CommandRefused(f"body larger than {MAX_BODY} bytes")
    if not payload.strip():
        return {}
    try:
        body = _read(payload)
    except (ValueError, RecursionError):
        raise CommandRefused("body is not valid JSON") from None
    marker = _non_finite_in(body)
    if marker is not None:
        raise CommandRefused(f"body has a number that is not finite ({marker.text}); JSON "
                             "has no NaN or Infinity")
    if not isinstance(body, dict):
        raise CommandRefused("body must be a JSON object")
    return body


def body_id(payload: bytes | bytearray) -> dict[str, Any]:
    """``{"id": ...}`` of a body refused before or while it was read (a retained command,
    a refused response topic, ``NaN`` or ``1e999`` somewhere in it), or ``{}``: clients
    match answers by id, and such refusals came back without it (outside probe). An id
    that holds a non-finite number, a body over MAX_BODY, one that is not a JSON object
    or not JSON at all has no usable id."""
    if len(payload) > MAX_BODY:
        return {}
    try:
        body = _read(payload)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(body, dict) or "id" not in body or _non_finite_in(body["id"]):
        return {}
    return {"id": body["id"]}


async def execute(gateway: Any, verb_name: str, body: dict[str, Any]) -> Any:
    verb = VERBS.get(verb_name)
    if verb is None:
        raise CommandRefused(f"unknown verb {verb_name!r}; known: {', '.join(sorted(VERBS))}")
    missing = [k for k in verb.needs if k not in body]
    if missing:
        raise CommandRefused(f"{verb_name} needs {', '.join(missing)}")
    return await verb.run(gateway, body)


MEMORY_TTL = 600.0
"""How long a command is remembered (docs/topics.md: "seen in the last 10 minutes")."""
MEMORY_BYTES = 16 * 1024 * 1024
"""The most the remembered answers may hold (each charged ``ENTRY_COST`` plus its JSON):
about 40,000 typical commands, i.e. 70 a second for the whole 10 minutes. Past it the
oldest are forgotten before their 10 minutes (counted and logged once by the ops bus): a
flood of commands must not grow memory without bound, and a sender that floods cannot
rely on duplicate protection anyway."""
ENTRY_COST = 256
"""Bytes charged per remembered command besides its answer: dict slot, key digest, time
and future, as measured with tracemalloc (about 230)."""


class CommandMemory:
    """Answers by command identity for ``ttl`` seconds, so a command delivered twice runs
    once (found by an outside probe: the same ``cmd/write`` ran two or three times when
    the sender's QoS 1 retransmit arrived after a reconnect; for a gate relay that is a
    second opening). The identity is the body's ``id``; without one, a message the broker
    flags as a redelivery (DUP) is matched by its payload. A duplicate gets the first
    answer again (the published JSON); one still running is waited for.

    Expiry is by age, not count: a bound of 4096 entries let a burst of 5,000 other
    commands in 1.4 s push out a command whose repeat then ran again (outside probe).
    Memory is bounded by ``max_bytes``; dropping an entry younger than ``ttl`` to stay
    under it is reported through ``on_forced`` with the dropped entry's age."""

    def __init__(self, ttl: float = MEMORY_TTL, max_bytes: int = MEMORY_BYTES, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_forced: Callable[[float], None] = lambda age: None) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.held = 0
        """Bytes charged for the entries now remembered."""
        self._clock = clock
        self._on_forced = on_forced
        self._answers: OrderedDict[bytes, _Remembered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def first(self, key: tuple[str, str]) -> asyncio.Future[bytes] | None:
        """The answer (future) of an earlier command with this key, or None: then this one
        is the first, and :meth:`remember` must be given its answer."""
        now = self._clock()
        self._expire(now)
        digest = _digest(key)
        entry = self._answers.get(digest)
        if entry is not None:
            return entry.answer
        self._answers[digest] = _Remembered(now, asyncio.get_running_loop().create_future())
        self._charge(ENTRY_COST, now)
        return None

    def remember(self, key: tuple[str, str], answer: bytes) -> None:
        """The first command's published answer, for its duplicates (now and later)."""
        entry = self._answers.get(_digest(key))
        if entry is not None and not entry.answer.done():
            entry.answer.set_result(answer)
            entry.cost += len(answer)
            self._charge(len(answer), self._clock())

    def _expire(self, now: float) -> None:
        while self._answers:
            entry = next(iter(self._answers.values()))
            if entry.since >= now - self.ttl:
                return
            self._drop_oldest()

    def _charge(self, cost: int, now: float) -> None:
        self.held += cost
        while self.held > self.max_bytes and len(self._answers) > 1:
            self._on_forced(now - self._drop_oldest())

    def _drop_oldest(self) -> float:
        _, entry = self._answers.popitem(last=False)
        self.held -= entry.cost
        return entry.since


@dataclass
class _Remembered:
    since: float
    answer: asyncio.Future[bytes]
    cost: int = ENTRY_COST


def _digest(key: tuple[str, str]) -> bytes:
    """A fixed-size key: an ``id`` may be up to a body's 16 KiB."""
    return hashlib.sha256("\0".join(key).encode("utf-8", "surrogatepass")).digest()
