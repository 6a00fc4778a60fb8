"""The camera_push driver: a device is an endpoint on the gateway's one push receiver.

It never emits through ``DeviceContext.emit``: the receiver submits through the gateway
handle so that it can answer the device only after the commit. Its own loop keeps the
device state: ``starting`` until the first valid post, ``online`` after one, ``offline``
once ``offline_after`` passes without a post, ``error`` while the receiver is failing
(e.g. its port is taken).
"""

from __future__ import annotations

import asyncio
import time

from drivers.camera_push.config import CameraPushConfig
from drivers.camera_push.receiver import Endpoint, PushReceiver
from gateway.driver import DeviceState, Driver
from gateway.errors import DeviceError

STATE_CHECK = 1.0


class CameraPushDriver(Driver):
    config: CameraPushConfig

    async def run(self) -> None:
        gateway = self.ctx.gateway
        if gateway is None:
            raise DeviceError("the camera_push driver runs only inside a gateway")

        async def make() -> PushReceiver:
            return await PushReceiver.create(gateway)

        async with self.ctx.resources.use(("http", "receiver"), make) as receiver:
            endpoint = receiver.attach(self.config, self.ctx)
            try:
                await self._watch(receiver, endpoint)
            finally:
                receiver.detach(endpoint)

    async def _watch(self, receiver: PushReceiver, endpoint: Endpoint) -> None:
        started = time.time()
        limit = self.config.offline_after
        while True:
            now = time.time()
            if receiver.failure is not None:
                self.ctx.set_state(DeviceState.ERROR, receiver.failure)
            elif endpoint.last_post is None:
                if limit is not None and now - started > limit:
                    self.ctx.set_state(DeviceState.OFFLINE,
                                       f"no post since the gateway started ({limit:g}s)")
            elif limit is not None and now - endpoint.last_post > limit:
                self.ctx.set_state(DeviceState.OFFLINE, f"no post for {limit:g}s")
            else:
                self.ctx.set_state(DeviceState.ONLINE)
            await asyncio.sleep(STATE_CHECK)
