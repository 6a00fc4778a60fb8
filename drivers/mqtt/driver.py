"""The mqtt driver: a device is a mapping attached to the shared device connection.

It never emits through ``DeviceContext.emit``: the shared broker submits through the
gateway handle (``DeviceContext.gateway``) so that it can acknowledge QoS 1 messages only
after their commit.
Its own loop only keeps the device state (online / offline) up to date.
"""

from __future__ import annotations

import asyncio
import time

from drivers.mqtt.broker import Attachment, DeviceBroker
from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.mapping import Mapper
from gateway.driver import DeviceState, Driver
from gateway.errors import DeviceError

STATE_CHECK = 1.0


class MqttDriver(Driver):
    config: MqttDeviceConfig

    async def run(self) -> None:
        gateway = self.ctx.gateway
        if gateway is None:
            raise DeviceError("the mqtt driver runs only inside a gateway")
        attachment = Attachment(Mapper(self.config), self.ctx)

        async def make() -> DeviceBroker:
            return await DeviceBroker.create(gateway)

        async with self.ctx.resources.use(("mqtt", "devices"), make) as broker:
            broker.attach(attachment)
            try:
                await self._watch(broker, attachment)
            finally:
                broker.detach(attachment)

    async def _watch(self, broker: DeviceBroker, attachment: Attachment) -> None:
        cfg, ctx = self.config, self.ctx
        while True:
            problems = attachment.mapper.problems  # field-level: wrong_type, bad_time
            if problems:
                broker.field_problems(attachment, {r: problems.pop(r) for r in list(problems)})
            if broker.failure is not None:
                ctx.set_state(DeviceState.ERROR, broker.failure)
            elif not broker.connection.connected:
                ctx.set_state(DeviceState.OFFLINE, "broker connection down")
            elif cfg.offline_after and (ctx.status.last_seen or 0) < time.time() - \
                    cfg.offline_after:
                ctx.set_state(DeviceState.OFFLINE, f"no message for {cfg.offline_after:g}s")
            else:
                ctx.set_state(DeviceState.ONLINE)
            await asyncio.sleep(STATE_CHECK)

