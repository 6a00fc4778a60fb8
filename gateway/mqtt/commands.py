"""Ops commands: ``cmd/<verb>`` with a JSON object body -> a JSON result.

A table of verbs, each with the body keys it needs. Anything unexpected (unknown verb,
bad JSON, missing keys, unknown device, point not in ``allow_write``, a driver that cannot
write) becomes CommandRefused with a reason; the device is never touched in those cases
because validation happens before any driver call, and the allow-list check lives in
``Gateway.write_point`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import CommandRefused

MAX_BODY = 16 * 1024


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


VERBS: dict[str, Verb] = {
    "reload": Verb((), _reload, "re-read the config file; answers the new config hash"),
    "poll": Verb(("device",), _poll, "read a device now"),
    "write": Verb(("device", "point", "value"), _write, "write an allow-listed point"),
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
