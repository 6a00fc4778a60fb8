"""Ops commands through a real broker against an in-process gateway.

Writes go to a test-local driver registered here (a Modbus write test belongs with the
Modbus driver); the point is the path: allow-list, refusals, ACL, correlation data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.config.loader import load_config
from gateway.errors import CommandRefused, ConfigError
from gateway.mqtt.commands import ENTRY_COST, MAX_BODY, CommandMemory, body_id, execute
from gateway.mqtt.ops import OpsBus, _dumps
from gateway.runtime import Gateway
from tests.gate_driver import WRITES
from tests.support.mqtt import TestClient, publish_properties
from tests.support.servers import Mosquitto
from tests.support.wait import eventually

pytestmark = pytest.mark.usefixtures("test_gate_driver")

ACL = """\
user gw
topic readwrite compound/#
topic write ops/replies/#
user ops
topic read compound/#
topic write compound/cmdtest/gw/cmd/#
topic readwrite ops/#
user viewer
topic read compound/#
"""



class Requester(TestClient):
    """An ops client: commands out; answers as (topic, payload, correlation data) in."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.answers: list[tuple[str, bytes, bytes | None]] = []
        # The viewer may not read ops/replies/#: that refusal is the broker's, not a failure.
        super().__init__(port, user, password, keep=False, refusals_ok=True)
        self.on_message = lambda c, u, m: self.answers.append(
            (m.topic, bytes(m.payload), getattr(m.properties, "CorrelationData", None)))
        self.subscribe("compound/cmdtest/gw/cmd/+/result", 1)
        self.subscribe("ops/replies/#", 1)

    def send(self, verb: str, body: bytes, correlation: bytes | None = None,
             reply_to: str | None = None, retain: bool = False) -> int:
        info = self.publish(f"compound/cmdtest/gw/cmd/{verb}", body, qos=1, retain=retain,
                            properties=publish_properties(correlation=correlation,
                                                          response_topic=reply_to))
        info.wait_for_publish(5)
        return info.mid


async def wait_answers(req: Requester, n: int, seconds: float = 10) -> list[dict[str, Any]]:
    answers = await eventually(lambda: list(req.answers), until=lambda a: len(a) >= n,
                               within=seconds, what=f"{n} answers")
    return [json.loads(p) for _, p, _ in answers]


async def ops_connected(gateway: Gateway, also: Callable[[], bool] = lambda: True) -> None:
    """The gateway's ops bus has a live broker connection (and ``also`` holds)."""
    await eventually(lambda: gateway_ops_connected(gateway) and also(), within=15,
                     what="the gateway's ops bus connected")


async def test_commands(tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(acl=ACL, users={"gw": "gw-secret", "ops": "ops-secret",
                                               "viewer": "viewer-secret"})
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-cmd, site: s, data_dir: data}\n"
        "sinks: [{type: file, name: f}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw, password: gw-secret,"
        " base_topic: compound/cmdtest/gw, client_id: cmdtest,"
        " response_topics: ['ops/replies/#']}\n"
        "devices:\n"
        "  - {id: gate-1, driver: test_gate, allow_write: [relay]}\n")
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    try:
        await ops_connected(gateway)
        ops = Requester(broker.port, "ops", "ops-secret")  # connected and subscribed
        ops.send("write", b'{"device": "gate-1", "point": "relay", "value": 1, "id": "a1"}',
                 correlation=b"corr-1", reply_to="ops/replies/x")
        answers = await wait_answers(ops, 1)
        assert answers[0] == {"verb": "write", "ok": True, "id": "a1", "result": {
            "device": "gate-1", "point": "relay", "value": 1, "written": True}}
        assert ops.answers[0][0] == "ops/replies/x" and ops.answers[0][2] == b"corr-1"
        assert WRITES == [("gate-1", "relay", 1)]

        refused = [
            ("write", b'{"device": "gate-1", "point": "siren", "value": 1}', "allow_write"),
            ("write", b'{"device": "nope", "point": "relay", "value": 1}', "unknown device"),
            ("write", b"{not json", "not valid JSON"),
            ("write", b'{"device": "gate-1", "point": "relay"}', "needs value"),
            ("write", b'[1, 2]', "JSON object"),
            ("fly", b"{}", "unknown verb"),
            ("poll", b'{"device": "gate-1"}', "cannot poll"),
        ]
        for i, (verb, body, _) in enumerate(refused):
            ops.send(verb, body, correlation=f"c{i}".encode())
        answers = await wait_answers(ops, 1 + len(refused))
        for i, (_, _, reason) in enumerate(refused):
            answer = next(a for (_, p, c), a in zip(ops.answers, answers, strict=True)
                          if c == f"c{i}".encode())
            assert answer["ok"] is False and reason in answer["error"], answer
        assert WRITES == [("gate-1", "relay", 1)], "a refused command reached the device"

        # connected (else the refusal below would prove nothing) and subscribed
        viewer = Requester(broker.port, "viewer", "viewer-secret")
        mid = viewer.send("write", b'{"device": "gate-1", "point": "relay", "value": 0}',
                          correlation=b"denied")
        refusal = viewer.puback(mid)
        assert refusal.is_failure and refusal.getName() == "Not authorized", refusal
        # A later allowed write from ops is answered: the viewer's, sent before it, had its
        # chance to reach the gateway and must not have.
        ops.send("write", b'{"device": "gate-1", "point": "relay", "value": 2, "id": "a2"}',
                 correlation=b"after-viewer")
        answers = await wait_answers(ops, 2 + len(refused))
        assert answers[-1]["ok"] is True and answers[-1]["id"] == "a2", answers[-1]
        assert WRITES == [("gate-1", "relay", 1), ("gate-1", "relay", 2)], \
            "the ACL let a viewer write"
        assert all(c != b"denied" for _, _, c in viewer.answers + ops.answers)
        ops.close()
        viewer.close()
    finally:
        gateway.request_stop()
        await asyncio.wait_for(runner, 15)


async def test_write_reaches_real_modbus_device(tmp_path: Path, mosquitto_factory: Callable[...,
                                                Mosquitto]) -> None:
    """cmd/write over mosquitto -> Gateway.write_point -> modbus driver -> pymodbus TCP
    server: the allow-listed coil changes on the server, the answer carries the
    correlation data; a point not in allow_write is refused and the server sees no write."""
    from drivers.modbus.sim import Device, TcpSim, Units
    from tests.support.servers import free_port

    broker = mosquitto_factory(acl=ACL, users={"gw": "gw-secret", "ops": "ops-secret",
                                               "viewer": "viewer-secret"})
    device = Device(coil={0: False, 1: False})
    units = Units({9: device})
    sim = await TcpSim(units, free_port()).start()
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-mb, site: s, data_dir: data}\n"
        "sinks: [{type: file, name: f}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw, password: gw-secret,"
        " base_topic: compound/cmdtest/gw, client_id: mbtest,"
        " response_topics: ['ops/replies/#']}\n"
        f"buses: {{plant: {{type: tcp, host: 127.0.0.1, port: {sim.port}, timeout: 1s}}}}\n"
        "devices:\n"
        "  - {id: gate-north, driver: modbus, bus: plant, unit: 9,"
        " profile: barrier-gate-controller, interval: 1s, allow_write: [open_gate]}\n")
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    ops: Requester | None = None
    try:
        await ops_connected(gateway, also=lambda: units.count(9) > 0)  # the driver polls
        ops = Requester(broker.port, "ops", "ops-secret")

        writes = lambda: [r for r in units.requests if r[1].startswith("write:")]  # noqa: E731
        ops.send("write", b'{"device": "gate-north", "point": "close_gate", "value": true}',
                 correlation=b"mb-refused")
        answers = await wait_answers(ops, 1)
        assert answers[0]["ok"] is False and "allow_write" in answers[0]["error"], answers[0]
        assert ops.answers[0][2] == b"mb-refused"
        assert writes() == [] and device.coil[1] is False, "a refused write reached the device"

        ops.send("write", b'{"device": "gate-north", "point": "open_gate", "value": true,'
                 b' "id": "w1"}', correlation=b"mb-open", reply_to="ops/replies/mb")
        answers = await wait_answers(ops, 2)
        topic, _, correlation = ops.answers[1]
        assert (topic, correlation) == ("ops/replies/mb", b"mb-open")
        answer = answers[1]
        assert answer["ok"] is True and answer["id"] == "w1", answer
        assert answer["result"]["point"] == "open_gate" and answer["result"]["value"] is True
        assert device.coil[0] is True, "the coil did not change on the Modbus server"
        assert writes() == [(9, "write:coil", 0, 1)]
        assert device.coil[1] is False
    finally:
        if ops is not None:
            ops.close()
        gateway.request_stop()
        await asyncio.wait_for(runner, 15)
        await sim.stop()


class Spy(TestClient):
    """Every message the broker routes, whatever the topic (the broker ACL is not the
    guard under test: this broker lets the gateway write anywhere)."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, bytes, bytes | None]] = []
        super().__init__(port, "spy", "spy-secret", keep=False)
        self.on_message = lambda c, u, m: self.seen.append(
            (m.topic, bytes(m.payload), getattr(m.properties, "CorrelationData", None)))
        self.subscribe("#", 1)

    def pairs(self, topic: str) -> list[tuple[bytes, bytes | None]]:
        """(payload, correlation data) of the messages on ``topic``."""
        return [(p, c) for t, p, c in list(self.seen) if t == topic]


async def test_response_topic_limited_to_the_gateway_subtree(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        caplog: pytest.LogCaptureFixture) -> None:
    """A command naming a response topic outside ``<base>/`` and ``mqtt.response_topics``
    (here a device's command topic) is refused and answered on cmd/<verb>/result; nothing
    reaches the named topic, the device is not written; allowed topics are honoured."""
    caplog.set_level(logging.INFO, logger="iotgw.mqtt.ops")
    acl = "user gw\ntopic readwrite #\nuser ops\ntopic readwrite #\nuser spy\ntopic read #\n"
    broker = mosquitto_factory(acl=acl, users={"gw": "gw-secret", "ops": "ops-secret",
                                               "spy": "spy-secret"})
    base = "compound/cmdtest/gw"
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-reply, site: s, data_dir: data}\n"
        "sinks: [{type: file, name: f}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw, password: gw-secret,"
        f" base_topic: {base}, client_id: replytest, response_topics: ['ops/replies/#']}}\n"
        "devices:\n"
        "  - {id: gate-1, driver: test_gate, allow_write: [relay]}\n")
    WRITES.clear()
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    spy = ops = None
    try:
        await ops_connected(gateway)
        spy = Spy(broker.port)
        ops = Requester(broker.port, "ops", "ops-secret")  # connected and subscribed
        write = b'{"device": "gate-1", "point": "relay", "value": 1}'
        default = f"{base}/cmd/write/result"
        refused = {b"device": "site/door-7/cmd",  # another device's command topic
                   b"device-again": "site/door-7/cmd",
                   b"own-command": f"{base}/cmd/write",  # would be read back as a command
                   b"own-status": f"{base}/status",  # would pass for the gateway's status
                   b"own-state": f"{base}/devices/gate-1/state",
                   b"wildcard": "ops/replies/#"}
        for correlation, reply_to in refused.items():
            ops.send("write", write, correlation=correlation, reply_to=reply_to)
        allowed = {b"subtree": f"{base}/replies/me", b"configured": "ops/replies/z"}
        for correlation, reply_to in allowed.items():
            ops.send("write", write, correlation=correlation, reply_to=reply_to)

        def answered() -> bool:
            return len(spy.pairs(default)) >= len(refused) and all(
                spy.pairs(t) for t in allowed.values())

        await eventually(answered, within=10)
        answers = {c: json.loads(p) for p, c in spy.pairs(default)}
        assert set(answers) == set(refused)
        for correlation, reply_to in refused.items():
            answer = answers[correlation]
            assert answer["ok"] is False, answer
            assert answer["error"].startswith(f"response topic {reply_to!r} refused"), answer
        assert "command topic of this gateway" in answers[b"own-command"]["error"]
        assert "publishes its own state" in answers[b"own-status"]["error"]
        assert "publishes its own state" in answers[b"own-state"]["error"]
        assert all(json.loads(p).get("state") in ("online", "offline")
                   for p, _ in spy.pairs(f"{base}/status")), "a result on the status topic"
        assert "not a topic name" in answers[b"wildcard"]["error"]
        for correlation, reply_to in allowed.items():
            (payload, got), = spy.pairs(reply_to)
            assert got == correlation and json.loads(payload)["ok"] is True
        assert spy.pairs("site/door-7/cmd") == [], "the gateway published into a foreign topic"
        assert {p for p, _ in spy.pairs(f"{base}/cmd/write")} == {write}, \
            "a result was published onto the gateway's own command topic"
        assert len(WRITES) == len(allowed), "a command with a refused response topic ran"

        ops_bus = ops_bus_of(gateway)
        assert ops_bus.counters["response_topic_refused"] == len(refused)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 4, errors  # once per kind: outside, own cmd, own state, not a name
        assert all("response topic" in e for e in errors)
        assert any("first: 'site/door-7/cmd'" in e for e in errors), errors
    finally:
        for client in (spy, ops):
            if client is not None:
                client.close()
        gateway.request_stop()
        await asyncio.wait_for(runner, 15)


def test_response_topics_must_be_mqtt_filters(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw, site: s, data_dir: data}\n"
        "sinks: [{type: file, name: f}]\n"
        "mqtt: {host: 127.0.0.1, base_topic: a/b, response_topics: ['ops/#/x']}\n")
    with pytest.raises(ConfigError, match="'#' must be the last level"):
        load_config(config, environ={})


def ops_bus_of(gateway: Gateway) -> OpsBus:
    runner = gateway.service_runners["ops-bus"]
    ops_bus = getattr(runner, "__self__", None)
    assert isinstance(ops_bus, OpsBus)
    return ops_bus


def gateway_ops_connected(gateway: Gateway) -> bool:
    """True once the ops bus has a live broker connection (its birth is published)."""
    runner = gateway.service_runners.get("ops-bus")
    return runner is not None and ops_bus_of(gateway).connection.connected


async def test_a_command_delivered_twice_runs_once(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """Found by an outside probe: a sender's QoS 1 retransmit after a reconnect ran the
    same write two or three times (a gate opened again). Same id: answered, not run."""
    broker = mosquitto_factory(acl=ACL, users={"gw": "gw-secret", "ops": "ops-secret"})
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-dup, site: s, data_dir: data}\n"
        "sinks: [{type: file, name: f}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw, password: gw-secret,"
        " base_topic: compound/cmdtest/gw, client_id: cmddup}\n"
        "devices:\n"
        "  - {id: gate-1, driver: test_gate, allow_write: [relay]}\n")
    WRITES.clear()
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    ops = None
    try:
        await ops_connected(gateway)
        ops = Requester(broker.port, "ops", "ops-secret")  # connected and subscribed
        open_gate = b'{"device": "gate-1", "point": "relay", "value": 1, "id": "open-17"}'
        ops.send("write", open_gate, correlation=b"first")
        ops.send("write", open_gate, correlation=b"again")  # at once: while the first runs
        answers = await wait_answers(ops, 2)
        await asyncio.sleep(0.3)
        ops.send("write", open_gate, correlation=b"later")
        answers = await wait_answers(ops, 3)
        other = b'{"device": "gate-1", "point": "relay", "value": 0, "id": "close-18"}'
        ops.send("write", other, correlation=b"other")
        answers = await wait_answers(ops, 4)
        by_correlation = {c: a for (_, _, c), a in zip(ops.answers, answers, strict=True)}
        assert WRITES == [("gate-1", "relay", 1), ("gate-1", "relay", 0)], WRITES
        assert by_correlation[b"first"]["ok"] is True and "duplicate" not in by_correlation[
            b"first"]
        for again in (b"again", b"later"):
            assert by_correlation[again]["duplicate"] is True
            assert by_correlation[again]["result"] == by_correlation[b"first"]["result"]
        assert ops_bus_of(gateway).counters["commands_duplicate"] == 2
    finally:
        if ops is not None:
            ops.close()
        gateway.request_stop()
        await asyncio.wait_for(runner, 15)


@asynccontextmanager
async def gateway_on(tmp_path: Path, broker: Mosquitto, client_id: str,
                     allow_write: str = "relay") -> AsyncIterator[Gateway]:
    """A gateway with one test_gate device, its ops bus connected to ``broker``."""
    config = tmp_path / "gw.yaml"
    config.write_text(gate_config(broker, client_id, allow_write))
    WRITES.clear()
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    try:
        await ops_connected(gateway)
        yield gateway
    finally:
        gateway.request_stop()
        await asyncio.wait_for(runner, 15)


def gate_config(broker: Mosquitto, client_id: str, allow_write: str) -> str:
    return ("gateway: {id: gw-x, site: s, data_dir: data}\n"
            "sinks: [{type: file, name: f}]\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker.port}, username: gw,"
            f" password: gw-secret, base_topic: compound/cmdtest/gw, client_id: {client_id}}}\n"
            "devices:\n"
            f"  - {{id: gate-1, driver: test_gate, allow_write: [{allow_write}]}}\n")


def strict_json(payload: bytes) -> Any:
    """RFC 8259 JSON only: NaN / Infinity (Python's extensions) raise."""
    def refuse(text: str) -> Any:
        raise ValueError(f"not JSON: {text}")
    return json.loads(payload, parse_constant=refuse)


async def test_command_memory_expires_by_age_not_by_count() -> None:
    """Outside probe: 5,000 other commands in 1.4 s pushed a command out of a 4096-entry
    memory, and its repeat ran again. Remembered for 10 minutes, however many come."""
    now = [1000.0]
    forced: list[float] = []
    memory = CommandMemory(clock=lambda: now[0], on_forced=forced.append)
    key = ("alarm", 'id:"oos-1"')
    assert memory.first(key) is None
    memory.remember(key, b'{"ok":true}')
    for i in range(5000):
        now[0] += 1.4 / 5000
        other = ("nosuch", f'id:"f{i}"')
        assert memory.first(other) is None
        memory.remember(other, b'{"verb":"nosuch","ok":false,"error":"unknown verb"}')
    earlier = memory.first(key)
    assert earlier is not None and await earlier == b'{"ok":true}'
    now[0] = 1000.0 + 599.9
    earlier = memory.first(key)
    assert earlier is not None, "forgotten before its 10 minutes"
    now[0] = 1000.0 + 600.1
    assert memory.first(key) is None, "remembered past its 10 minutes"
    assert forced == []
    now[0] += 600.1
    memory.first(("poll", "id:1"))
    assert len(memory) == 1 and memory.held == ENTRY_COST, "expired entries kept"


async def test_command_memory_bound_forgets_oldest_first() -> None:
    now = [0.0]
    forced: list[float] = []
    answer = b"x" * 100
    memory = CommandMemory(max_bytes=10 * (ENTRY_COST + len(answer)), clock=lambda: now[0],
                           on_forced=forced.append)
    for i in range(12):
        now[0] = float(i)
        assert memory.first(("write", f"id:{i}")) is None
        memory.remember(("write", f"id:{i}"), answer)
    assert memory.held <= memory.max_bytes and len(memory) == 10
    assert forced == [10.0, 10.0]  # the two oldest, each 10 s after it came
    assert memory.first(("write", "id:0")) is None  # forgotten: would run again
    assert memory.first(("write", "id:11")) is not None


async def test_ops_bus_says_once_when_the_bound_forgets_early(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto],
        caplog: pytest.LogCaptureFixture) -> None:
    broker = mosquitto_factory(acl=ACL, users={"gw": "gw-secret", "ops": "ops-secret"})
    async with gateway_on(tmp_path, broker, "cmdbound") as gateway:
        ops_bus = ops_bus_of(gateway)
        ops_bus._memory.max_bytes = 3 * ENTRY_COST + 300
        ops = Requester(broker.port, "ops", "ops-secret")
        try:
            for i in range(6):
                ops.send("fly", f'{{"id": {i}}}'.encode())
            await wait_answers(ops, 6)
        finally:
            ops.close()
        assert ops_bus.counters["commands_forgotten_early"] >= 3
    warnings = [r.getMessage() for r in caplog.records
                if "duplicate memory" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "commands_forgotten_early" in warnings[0]


async def test_retained_commands_never_run(tmp_path: Path,
                                           mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """Outside probe: a retained command published while the gateway was connected ran
    (the broker cleared RETAIN on live delivery), and clearing it again (an empty
    retained message, the broker deleting it) was answered and audited as a command."""
    broker = mosquitto_factory(acl=ACL, users={"gw": "gw-secret", "ops": "ops-secret"})
    async with gateway_on(tmp_path, broker, "cmdretain") as gateway:
        ops = Requester(broker.port, "ops", "ops-secret")
        try:
            ops.send("write", b'{"device": "gate-1", "point": "relay", "value": 1, '
                     b'"id": "ret-1"}', correlation=b"retained", retain=True)
            answers = await wait_answers(ops, 1)
            assert answers[0]["ok"] is False and "retained" in answers[0]["error"], answers
            assert answers[0]["id"] == "ret-1"  # clients match answers by id (probe)
            for verb in ("write", "alarm", "reload"):  # the broker deletes the retained ones
                ops.send(verb, b"", correlation=b"clear-" + verb.encode(), retain=True)
            ops.send("write", b'{"device": "gate-1", "point": "relay", "value": 2}',
                     correlation=b"plain")
            await wait_answers(ops, 2)
            ops_bus = ops_bus_of(gateway)
            await eventually(lambda: not ops_bus._tasks, what="every command handled")
            ops.send("fly", b"{}", correlation=b"last")  # answered after any earlier answer
            await eventually(lambda: any(c == b"last" for _, _, c in ops.answers))
            assert [c for _, _, c in ops.answers] == [b"retained", b"plain", b"last"], \
                ops.answers
        finally:
            ops.close()
        assert WRITES == [("gate-1", "relay", 2)], "a retained command ran"
        counters = ops_bus_of(gateway).counters
        assert counters.get("commands_refused") == 2 and counters.get("commands_ok") == 1


async def test_non_finite_numbers_are_refused(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """Outside probe: ``NaN`` and ``1e999`` (infinity) bodies reached a device's write
    (a Modbus float register took NaN), and ``"id": Infinity`` came back as non-standard
    JSON. Refused at parsing; every answer is standard JSON, and names the command by
    its id when the id itself is finite (it was left out: clients match answers by id)."""
    broker = mosquitto_factory(acl=ACL, users={"gw": "gw-secret", "ops": "ops-secret"})
    async with gateway_on(tmp_path, broker, "cmdnan") as gateway:
        ops = Requester(broker.port, "ops", "ops-secret")
        bodies = [b'{"device": "gate-1", "point": "relay", "value": NaN}',
                  b'{"device": "gate-1", "point": "relay", "value": -Infinity, "id": "n2"}',
                  b'{"device": "gate-1", "point": "relay", "value": 1e999, "id": 3}',
                  b'{"device": "gate-1", "point": "relay", "value": 1, "id": Infinity}',
                  b'{"device": "gate-1", "point": "relay", "value": 1, "id": -1e400}',
                  b'{"device": "gate-1", "point": "relay", "value": [1, NaN], '
                  b'"id": {"run": [1.5, "x"]}}',
                  b'{"device": "gate-1", "point": "relay", "value": 1, "id": ["a", NaN]}']
        ids = [None, "n2", 3, None, None, {"run": [1.5, "x"]}, None]
        try:
            for i, body in enumerate(bodies):
                ops.send("write", body, correlation=str(i).encode())
            await wait_answers(ops, len(bodies))
            answers = [strict_json(p) for _, p, _ in ops.answers]
        finally:
            ops.close()
        for answer, (_, _, correlation) in zip(answers, ops.answers, strict=True):
            assert answer["ok"] is False and "not finite" in answer["error"], answer
            assert answer.get("id") == ids[int(correlation or b"")], answer
        # The verb itself, should a non-finite value come another way than JSON:
        for value in (math.nan, math.inf, -math.inf):
            with pytest.raises(CommandRefused, match="finite number"):
                await execute(gateway, "write", {"device": "gate-1", "point": "relay",
                                                 "value": value})
        assert WRITES == []


def test_ops_bus_json_is_standard(caplog: pytest.LogCaptureFixture) -> None:
    """A non-finite number that still reaches an ops-bus message (a float register's
    read-back) is sent as null, and said once."""
    assert _dumps({"a": [math.nan, 1.5], "b": {"c": -math.inf}, "d": "x"}) == \
        b'{"a":[null,1.5],"b":{"c":null},"d":"x"}'
    assert _dumps({"e": math.inf}) == b'{"e":null}'
    assert sum("non-finite" in r.getMessage() for r in caplog.records) == 1


async def test_last_will_follows_a_reload(tmp_path: Path,
                                          mosquitto_factory: Callable[..., Mosquitto]) -> None:
    """Outside probe: the will (``status: offline``) was built once at start, so after a
    reload it carried the old config hash. It is built at every connect: after a reload,
    the will of the next connection carries the new hash and that connection's time."""
    acl = ACL + "user spy\ntopic read #\n"
    broker = mosquitto_factory(acl=acl, users={"gw": "gw-secret", "spy": "spy-secret"})
    async with gateway_on(tmp_path, broker, "cmdwill") as gateway:
        spy = Spy(broker.port)
        status = "compound/cmdtest/gw/status"

        def states() -> list[dict[str, Any]]:
            return [strict_json(p) for p, _ in spy.pairs(status)]

        try:
            old = gateway.config.digest
            gateway.config.path.write_text(gate_config(broker, "cmdwill", "relay, siren"))
            assert await gateway.reload()
            new = gateway.config.digest
            assert new != old
            reloaded_at = datetime.now().astimezone()

            for _ in range(2):  # the will of the connection during the reload, then the next
                seen = len(states())
                cut_connection(gateway)
                await eventually(states, until=back_online(seen), what="offline, then online")
            wills = [s for s in states() if s["state"] == "offline"]
        finally:
            spy.close()
    assert [w["config"] for w in wills] == [old, new], wills
    assert datetime.fromisoformat(wills[1]["time"]) >= reloaded_at


def back_online(seen: int) -> Callable[[list[dict[str, Any]]], bool]:
    """Two more status messages than ``seen`` (the will, the birth), the last online."""
    return lambda states: len(states) >= seen + 2 and states[-1]["state"] == "online"


def cut_connection(gateway: Gateway) -> None:
    """End the ops bus's broker connection without a DISCONNECT: the broker sends the
    will, as for a crash."""
    client = ops_bus_of(gateway).connection._client
    assert client is not None
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize(("payload", "known"), [
    (b'{"id": "a", "for": NaN}', {"id": "a"}),
    (b'{"id": [1, {"k": 2.5}], "v": 1e999}', {"id": [1, {"k": 2.5}]}),
    (b'{"id": [1, {"k": -Infinity}]}', {}),
    (b'{"id": "a"', {}),  # not JSON: no id to be had
    (b'["id", "a"]', {}),
    (b'{"v": NaN}', {}),
    (b'{"id": "' + b"x" * MAX_BODY + b'"}', {}),  # over the limit: not read
    (b'{"id": "a\xff"}', {}),
])
def test_the_id_of_a_refused_body(payload: bytes, known: dict[str, Any]) -> None:
    assert body_id(payload) == known
