"""Ops commands: ``cmd/<verb>`` with a JSON object body -> a JSON result.

A table of verbs, each with the body keys it needs. Anything unexpected (unknown verb,
bad JSON, missing keys, unknown device, point not in ``allow_write``, a driver that cannot
write) becomes CommandRefused with a reason; the device is never touched in those cases
because validation happens before any driver call, and the allow-list check lives in
``Gateway.write_point`` itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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


async def _reload(gateway: Any, body: dict[str, Any]) -> Any:
    if not await gateway.reload():
        raise CommandRefused("config rejected, the running config stays (see the log)")
    return {"config": gateway.config.digest}


async def _poll(gateway: Any, body: dict[str, Any]) -> Any:
    await gateway.poll_device(_text(body, "device"))
    return {"device": body["device"]}


async def _write(gateway: Any, body: dict[str, Any]) -> Any:
    value = body["value"]
    if not isinstance(value, bool | int | float | str) or value is None:
        raise CommandRefused("value must be a number, a boolean or a string")
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


def parse_body(payload: bytes | bytearray) -> dict[str, Any]:
    if len(payload) > MAX_BODY:
        raise CommandRefused(f"body larger than {MAX_BODY} bytes")
    if not payload.strip():
        return {}
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        raise CommandRefused("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise CommandRefused("body must be a JSON object")
    return body


async def execute(gateway: Any, verb_name: str, body: dict[str, Any]) -> Any:
    verb = VERBS.get(verb_name)
    if verb is None:
        raise CommandRefused(f"unknown verb {verb_name!r}; known: {', '.join(sorted(VERBS))}")
    missing = [k for k in verb.needs if k not in body]
    if missing:
        raise CommandRefused(f"{verb_name} needs {', '.join(missing)}")
    return await verb.run(gateway, body)


class CommandMemory:
    """Answers by command identity for ``ttl`` seconds, so a command delivered twice runs
    once (found by an outside probe: the same ``cmd/write`` ran two or three times when
    the sender's QoS 1 retransmit arrived after a reconnect; for a gate relay that is a
    second opening). The identity is the body's ``id``; without one, a message the broker
    flags as a redelivery (DUP) is matched by its payload. A duplicate gets the first
    answer again, marked ``"duplicate": true``; one still running is waited for."""

    def __init__(self, ttl: float = 600.0, size: int = 4096) -> None:
        self.ttl = ttl
        self.size = size
        self._answers: OrderedDict[tuple[str, str], tuple[float, asyncio.Future[Any]]] = \
            OrderedDict()

    def first(self, key: tuple[str, str]) -> asyncio.Future[Any] | None:
        """The answer (future) of an earlier command with this key, or None: then this one
        is the first, and :meth:`remember` must be given its answer."""
        now = time.monotonic()
        while self._answers and next(iter(self._answers.values()))[0] < now - self.ttl:
            self._answers.popitem(last=False)
        entry = self._answers.get(key)
        if entry is not None:
            return entry[1]
        self._answers[key] = (now, asyncio.get_running_loop().create_future())
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)
        return None

    def remember(self, key: tuple[str, str], answer: dict[str, Any]) -> None:
        entry = self._answers.get(key)
        if entry is not None and not entry[1].done():
            entry[1].set_result(answer)
