"""Fuzz harness for ops commands (issue 10): hostile verbs and bodies through a real
mosquitto into an in-process gateway.

Generated commands: real and made-up verbs (unicode, long), bodies that are junk bytes,
JSON of every shape, deep nesting, lone surrogates, huge numbers, NaN, the right keys
with wrong types. The property: every command is answered exactly once (matched by its
correlation data), the device is written exactly for the commands the allow-list and the
verb's rules accept (an oracle written from the documented rules), and the gateway is
still up and answering afterwards. A fixed seed in CI; ``-m soak`` sends many more.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.loader import load_config
from gateway.runtime import Gateway
from tests.gate_driver import WRITES
from tests.support.mqtt import TestClient, publish_properties
from tests.support.wait import eventually

pytestmark = pytest.mark.usefixtures("test_gate_driver")

BASE = "compound/opsfuzz/gw"
USERS = {"gw": "gw-secret", "ops": "ops-secret"}
ACL = f"user gw\ntopic readwrite {BASE}/#\nuser ops\ntopic readwrite {BASE}/#\n"



_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                  st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2))
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["device", "point", "value", "id", "client", "x"]), inner, max_size=5),
    max_leaves=10)
BODIES = st.one_of(
    st.binary(max_size=80),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"device": _leaf, "point": _leaf, "value": _leaf}).map(
        lambda d: json.dumps(d).encode()),
    st.integers(1, 3000).map(lambda n: b'{"device": ' + b"[" * n),
    st.just(b" " * 20_000),
)
VERBS = st.one_of(st.sampled_from(["write", "write", "write", "poll", "reload"]),
                  st.text(st.characters(exclude_categories=["Cs", "Cc"],
                                        exclude_characters="/+#"), min_size=1, max_size=30))
WRITE_LIKE = st.tuples(st.just("write"), st.fixed_dictionaries(
    {"device": st.sampled_from(["gate-1", "gate-1", "gate-1", "gate-2", "nope", ""]),
     "point": st.sampled_from(["relay", "relay", "relay", "siren"]),
     "value": st.integers(0, 3) | st.booleans() | _leaf},
    optional={"id": _leaf, "client": _leaf}).map(lambda d: json.dumps(d).encode()))
"""Close to an allowed write, so the oracle's "this one must happen" side is exercised."""
COMMANDS = st.lists(st.one_of(st.tuples(VERBS, BODIES), WRITE_LIKE), min_size=1,
                    max_size=40)


def expected_write(verb: str, body: bytes, seen_ids: set[tuple[str, str]]
                   ) -> tuple[str, str, Any] | None:
    """The documented rules: a write of an allow-listed point, a value that is a number,
    boolean or string, a body under 16 KiB that is a JSON object, whose ``id`` (if any)
    this verb has not seen yet (a repeated id is answered, not run again)."""
    if len(body) > 16 * 1024:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    if "id" in doc:
        key = (verb, json.dumps(doc["id"], sort_keys=True))
        if key in seen_ids:
            return None
        seen_ids.add(key)
    if verb != "write" or doc.get("device") != "gate-1" or \
            doc.get("point") != "relay" or "value" not in doc:
        return None
    value = doc["value"]
    if value is None or not isinstance(value, bool | int | float | str):
        return None
    return ("gate-1", "relay", value)


class Requester(TestClient):
    """The ops client: the gateway's status and the answers, by correlation data."""

    def __init__(self, port: int) -> None:
        self.answers: dict[bytes, list[dict[str, Any]]] = {}
        self.online = False
        super().__init__(port, "ops", USERS["ops"], keep=False)
        self.on_message = self._record
        self.subscribe(f"{BASE}/cmd/+/result", 1)
        self.subscribe(f"{BASE}/status", 1)

    def _record(self, client: Any, userdata: Any, message: Any) -> None:
        if message.topic.endswith("/status"):
            self.online = json.loads(message.payload)["state"] == "online"
            return
        key = getattr(message.properties, "CorrelationData", b"")
        self.answers.setdefault(key, []).append(json.loads(message.payload))

    def send(self, verb: str, body: bytes, correlation: bytes) -> None:
        self.publish(f"{BASE}/cmd/{verb}", body, qos=1,
                     properties=publish_properties(correlation=correlation)
                     ).wait_for_publish(5)


def _same(a: Any, b: Any) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) \
        or (a == b and type(a) is type(b))


async def _fuzz(tmp_path: Path, port: int, max_examples: int) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-opsfuzz, site: s, data_dir: data}\n"
        "sinks: [{type: file, name: f}]\n"
        f"mqtt: {{host: 127.0.0.1, port: {port}, base_topic: {BASE}, client_id: opsfuzz,"
        " username: gw, password: gw-secret}\n"
        "devices:\n"
        "  - {id: gate-1, driver: test_gate, allow_write: [relay]}\n"
        "  - {id: gate-2, driver: test_gate}\n")
    gateway = Gateway(load_config(config))
    runner = asyncio.create_task(gateway.run())
    ops = Requester(port)
    loop = asyncio.get_running_loop()
    counter = iter(range(10**9))
    totals = {"writes": 0, "commands": 0}
    seen_ids: set[tuple[str, str]] = set()
    try:
        await eventually(lambda: ops.online, within=20, what="the gateway online")

        @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(COMMANDS)
        def prop(commands: list[tuple[str, bytes]]) -> None:
            WRITES.clear()
            keys = []
            expected = []
            for verb, body in commands:
                key = f"c{next(counter)}".encode()
                keys.append(key)
                ops.send(verb, body, key)
                want = expected_write(verb, body, seen_ids)
                if want is not None:
                    expected.append(want)
            asyncio.run_coroutine_threadsafe(_answered(ops, keys), loop).result(60)
            assert all(len(ops.answers[k]) == 1 for k in keys), "answered exactly once"
            assert len(WRITES) == len(expected), (WRITES, expected)
            totals["writes"] += len(WRITES)
            totals["commands"] += len(commands)
            remaining = list(expected)
            for write in WRITES:
                match = next(i for i, w in enumerate(remaining)
                             if w[:2] == write[:2] and _same(w[2], write[2]))
                remaining.pop(match)

        await asyncio.to_thread(prop)
        assert 0 < totals["writes"] < totals["commands"] / 2, totals
        assert not runner.done(), "the gateway stopped"
        assert gateway.supervisor is not None and not gateway.supervisor.failing
    finally:
        ops.close()
        gateway.request_stop()
        await asyncio.wait_for(runner, 15)


async def _answered(ops: Requester, keys: list[bytes]) -> None:
    await eventually(lambda: all(k in ops.answers for k in keys), within=60,
                     what=lambda: f"answers to {keys}; got {sorted(ops.answers)}")


async def test_hostile_commands_are_answered_and_only_allowed_writes_happen(
        tmp_path: Path, mosquitto_factory: Any) -> None:
    broker = mosquitto_factory(acl=ACL, users=USERS)
    await _fuzz(tmp_path, broker.port, max_examples=15)


@pytest.mark.soak
async def test_hostile_commands_long(tmp_path: Path, mosquitto_factory: Any) -> None:
    broker = mosquitto_factory(acl=ACL, users=USERS)
    await _fuzz(tmp_path, broker.port, max_examples=500)
