"""The event_stream driver: a device is a set of filters attached to its host's stream.

It never emits through ``DeviceContext.emit``: the shared :class:`HostStream` submits
through the gateway handle, routes each event to the devices that want it, and keeps
their state (up / auth_failed / unreachable / stream_silent) and last-seen current.
"""

from __future__ import annotations

import asyncio

from drivers.event_stream.config import EventStreamConfig
from drivers.event_stream.position import Position
from drivers.event_stream.stream import Attachment, HostStream
from gateway.driver import Driver
from gateway.errors import DeviceError


class EventStreamDriver(Driver):
    config: EventStreamConfig
    stream: HostStream | None = None
    """The host's shared stream while this device is attached (diagnostics, tests)."""

    async def run(self) -> None:
        gateway = self.ctx.gateway
        if gateway is None:
            raise DeviceError("the event_stream driver runs only inside a gateway")
        cfg = self.config
        position = Position.load(gateway.data_dir, self.ctx.device_id) if cfg.backfill \
            else Position(None)
        attachment = Attachment(cfg, self.ctx, position)

        async def make() -> HostStream:
            return await HostStream.create(gateway, cfg)

        async with self.ctx.resources.use(("event_stream", cfg.host, cfg.port), make) as stream:
            stream.attach(attachment)
            self.stream = stream
            try:
                await asyncio.Event().wait()  # the stream does the work until we are stopped
            finally:
                self.stream = None
                stream.detach(attachment)
