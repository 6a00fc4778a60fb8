"""Helpers for the alarm output tests: an MQTT watcher (paho, through a real broker), a
gateway runner, and FakeAlarms, a minimal in-test AlarmService.

FakeAlarms is for the unit layer only (it lets the ops bus, metrics and actions be tested
against the contract in gateway/alarms/model.py without rules); the end-to-end tests in
tests/test_alarms_e2e.py run the same outputs through the real engine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.alarms.model import (
    ACTIVE_STATES,
    AlarmAction,
    AlarmCommand,
    AlarmCommandRefused,
    AlarmKey,
    AlarmSnapshot,
    AlarmState,
    Transition,
    TransitionListener,
)
from gateway.config.loader import load_config
from gateway.runtime import Gateway


class Watcher:
    """A paho MQTT 5 client that records (topic, payload, retain) of what it receives."""

    def __init__(self, port: int, user: str, password: str, filters: list[str]) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.username_pw_set(user, password)
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, bytes(m.payload), bool(m.retain)))
        self.filters = filters
        self.client.on_connect = self._subscribe
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _subscribe(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                   props: Any) -> None:
        for topic in self.filters:
            client.subscribe(topic, 1)

    def send(self, topic: str, body: dict[str, Any] | bytes, *, retain: bool = False,
             reply_to: str | None = None, correlation: bytes | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        props = Properties(PacketTypes.PUBLISH)
        if reply_to is not None:
            props.ResponseTopic = reply_to
        if correlation is not None:
            props.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, retain=retain,
                            properties=props).wait_for_publish(5)

    def on(self, topic: str) -> list[dict[str, Any]]:
        """Decoded non-empty payloads received on ``topic``, in order."""
        return [json.loads(p) for t, p, _ in list(self.messages) if t == topic and p]

    def cleared(self, topic: str) -> bool:
        return any(t == topic and not p for t, p, _ in list(self.messages))

    async def wait(self, check: Callable[[], Any], seconds: float = 15, what: str = "") -> Any:
        """Hang guard: poll ``check`` until it returns something truthy."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or check}; got "
                             f"{[(t, p[:200]) for t, p, _ in self.messages][-20:]}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@asynccontextmanager
async def running(config_path: Path, setup: Callable[[Gateway], None] | None = None,
                  environ: dict[str, str] | None = None) -> AsyncIterator[Gateway]:
    """An in-process gateway; ``setup`` runs before ``run`` (to attach a FakeAlarms)."""
    gateway = Gateway(load_config(config_path, environ=environ))
    if setup is not None:
        setup(gateway)
    runner = asyncio.create_task(gateway.run())
    try:
        async with asyncio.timeout(20):
            while gateway.pipeline is None or gateway.supervisor is None:
                if runner.done():
                    runner.result()
                await asyncio.sleep(0.05)
        yield gateway
    finally:
        gateway.request_stop()
        await asyncio.wait_for(runner, 20)


def ops_connected(gateway: Gateway) -> bool:
    runner = gateway.service_runners.get("ops-bus")
    ops = getattr(runner, "__self__", None)
    return ops is not None and bool(ops.connection.connected)


COMMAND_STATES: dict[AlarmAction, dict[AlarmState, AlarmState]] = {
    AlarmAction.ACK: {AlarmState.ACTIVE_UNACKED: AlarmState.ACTIVE_ACKED,
                      AlarmState.CLEARED_UNACKED: AlarmState.NORMAL},
    AlarmAction.SHELVE: {s: AlarmState.SHELVED for s in AlarmState
                         if s not in (AlarmState.SHELVED, AlarmState.OUT_OF_SERVICE)},
    AlarmAction.UNSHELVE: {AlarmState.SHELVED: AlarmState.NORMAL},
    AlarmAction.RESET: {s: AlarmState.NORMAL for s in ACTIVE_STATES},
    AlarmAction.OUT_OF_SERVICE: {s: AlarmState.OUT_OF_SERVICE for s in AlarmState
                                 if s is not AlarmState.OUT_OF_SERVICE},
    AlarmAction.IN_SERVICE: {AlarmState.OUT_OF_SERVICE: AlarmState.NORMAL},
}


class FakeAlarms:
    """A minimal AlarmService for unit tests: alarms change only when a test says so."""

    def __init__(self) -> None:
        self.store: dict[AlarmKey, AlarmSnapshot] = {}
        self.listeners: list[TransitionListener] = []
        self.commands: list[AlarmCommand] = []

    def add_transition_listener(self, listener: TransitionListener) -> None:
        self.listeners.append(listener)

    async def run(self) -> None:
        """Supervised like the engine's runtime; nothing to do."""
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass

    async def reload(self, config: Any, pseudonymize: Any) -> None:
        """The engine keeps its alarms over a reload; a test removes one by hand."""

    def alarms(self) -> list[AlarmSnapshot]:
        return list(self.store.values())

    def set(self, rule: str, device: str, state: AlarmState, cause: str, *,
            severity: int = 2, value: Any = None, message: str = "", at: float | None = None,
            client: str | None = None) -> Transition:
        key = AlarmKey(rule, device)
        now = time.time() if at is None else at
        old = self.store.get(key)
        alarm = AlarmSnapshot(key, state, severity, now, value, message,
                              (old.seq if old else 0) + 1, f"{rule}:{device}",
                              tags={"building": "1"}) if old is None else \
            replace(old, state=state, since=now, seq=old.seq + 1,
                    value=value if value is not None else old.value,
                    message=message or old.message)
        self.store[key] = alarm
        transition = Transition(alarm, old.state if old else AlarmState.NORMAL, cause, now,
                                client)
        for listener in self.listeners:
            listener(transition)
        return transition

    async def command(self, command: AlarmCommand) -> AlarmSnapshot:
        self.commands.append(command)
        key = AlarmKey(command.rule, command.device)
        alarm = self.store.get(key)
        if alarm is None:
            raise AlarmCommandRefused(f"no alarm {command.rule}/{command.device}")
        target = COMMAND_STATES[command.action].get(alarm.state)
        if target is None:
            raise AlarmCommandRefused(f"cannot {command.action} an alarm in {alarm.state}")
        return self.set(command.rule, command.device, target, str(command.action),
                        client=command.client).alarm
