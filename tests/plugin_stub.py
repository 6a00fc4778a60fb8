"""An in-process stand-in for the gateway handle (gateway.plugin.GatewayHandle), for
tests that drive a shared connection's intake directly. The real handle is the running
Gateway, exercised end to end through real brokers in tests/test_mqtt_*.py and
tests/test_poison.py; this one records what the plugin did, or forwards to a real
Pipeline when given one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from gateway.config.models import MqttSection
from gateway.pipeline import Pipeline
from gateway.plugin import DeadLetter, SectionT
from gateway.reading import Reading
from gateway.shared import SharedResources
from gateway.supervisor import TaskStarter


class StubGateway:
    gateway_id = "gw"

    def __init__(self, pipeline: Pipeline | None = None,
                 refuse: Callable[[Sequence[Reading]], bool] | None = None,
                 data_dir: Path = Path("/nonexistent/stub-data-dir")) -> None:
        self.data_dir = data_dir
        self.pipeline = pipeline
        self.refuse = refuse
        self.resources = SharedResources()
        self.submitted: list[tuple[str, list[Reading]]] = []
        self.dead: list[DeadLetter] = []
        self.connection_counters: dict[str, Counter[str]] = {}
        self.sections: dict[str, BaseModel] = {
            "mqtt": MqttSection(host="127.0.0.1", port=1, base_topic="stub/gw")}

    @property
    def tasks(self) -> TaskStarter:
        raise RuntimeError("the stub runs no tasks: drive the intake directly")

    def section(self, name: str, model: type[SectionT]) -> SectionT | None:
        value = self.sections.get(name)
        assert value is None or isinstance(value, model)
        return value

    async def submit(self, device_id: str, readings: Sequence[Reading]) -> None:
        if self.refuse is not None and self.refuse(readings):
            raise ValueError("refused")
        self.submitted.append((device_id, list(readings)))
        if self.pipeline is not None:
            await self.pipeline.submit(device_id, readings)

    async def wait_committed(self) -> None:
        if self.pipeline is not None:
            await self.pipeline.wait_committed()

    async def wait_stored(self) -> bool:
        if self.pipeline is not None:
            return await self.pipeline.wait_stored()
        return True

    def counters(self, connection: str) -> Counter[str]:
        return self.connection_counters.setdefault(connection, Counter())

    def dead_letter(self, letter: DeadLetter) -> None:
        self.dead.append(letter)
