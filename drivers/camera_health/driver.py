"""camera_health: probe a camera in layers and say what is wrong, not just "down".

Every ``interval``: TCP connect to the RTSP port (the round trip is reported), RTSP
``OPTIONS``, then ``DESCRIBE`` of the configured stream path with the credentials, then
ONVIF ``GetSystemDateAndTime`` where configured (clock skew). The condition (up,
auth_failed, bad_answer, unreachable) becomes the device state on ``devices/<id>/state``
and a ``camera_health`` reading each probe (up 0/1, condition, rtt_ms, skew_s) so a rule
can raise an alarm on an offline camera.

Last-seen is the last time the camera *answered* (a 401 is an answer: it is alive), not
the last probe: an offline camera shows when it was last heard of, never a fresh stamp.
"""

from __future__ import annotations

import asyncio
import logging
import time

from drivers.camera_health.config import CameraHealthConfig
from drivers.camera_health.onvif import clock_skew
from drivers.camera_health.rtsp import RtspProbe
from drivers.event_stream.client import DeviceHttp
from drivers.event_stream.conditions import STATES, UNREACHABLE, UP, condition_of
from gateway.config.types import secret_value
from gateway.driver import DeviceContext, Driver
from gateway.errors import DeviceError
from gateway.problems import ProblemLog
from gateway.reading import FieldValue, Reading


class CameraHealthDriver(Driver):
    config: CameraHealthConfig

    def __init__(self, config: CameraHealthConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        cfg = config
        self.probe = RtspProbe(cfg.host, cfg.rtsp_port, cfg.rtsp_path, cfg.username,
                               secret_value(cfg.password), cfg.timeout,
                               allow_basic=cfg.rtsp_auth == "basic")
        self.problems = ProblemLog(ctx.log)
        self.last_answer: float | None = None
        self._http: DeviceHttp | None = None
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        cfg = self.config
        if cfg.onvif:
            host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
            self._http = DeviceHttp(f"http://{host}:{cfg.onvif_port}", auth="none",
                                    connect_timeout=cfg.timeout)
        try:
            while True:
                await self.poll_now()
                await asyncio.sleep(cfg.interval)
        finally:
            if self._http is not None:
                await self._http.close()

    async def poll_now(self) -> None:
        async with self._lock:
            await self._probe()

    async def _probe(self) -> None:
        cfg, ctx = self.config, self.ctx
        fields: dict[str, FieldValue] = {}
        detail = ""
        try:
            await self.probe.run()
            condition = UP
        except DeviceError as exc:
            condition, detail = condition_of(exc), str(exc)
        if self.probe.rtt is not None:  # connected, whatever came after
            fields["rtt_ms"] = round(self.probe.rtt * 1000, 3)
        if condition == UP or self.probe.answered:
            self.last_answer = time.time()
        if self._http is not None and condition != UNREACHABLE:
            skew = await self._skew()
            if skew is not None:
                fields["skew_s"] = round(skew, 3)
        if condition == UP:
            self.problems.recovered("probe", f"camera {ctx.device_id}: up again")
        else:
            ctx.count(condition)
            self.problems.report("probe", f"camera {ctx.device_id}: {condition}: {detail}",
                                 level=logging.WARNING, kind=condition)
        # last_seen before the state: the state message carries it (ops bus, retained)
        ctx.status.last_seen = self.last_answer
        ctx.set_state(STATES[condition], None if condition == UP else f"{condition}: {detail}",
                      condition=condition)
        fields.update({"up": int(condition == UP), "condition": condition})
        await ctx.emit([Reading(cfg.measurement, {"probe": "rtsp"}, fields, time.time_ns())])
        ctx.status.last_seen = self.last_answer  # emit stamps "now"; we mean "answered"

    async def _skew(self) -> float | None:
        cfg, ctx = self.config, self.ctx
        assert self._http is not None
        try:
            skew = await clock_skew(self._http, cfg.onvif_path, cfg.timeout)
        except DeviceError as exc:
            ctx.count("onvif_failed")
            self.problems.report("onvif", f"camera {ctx.device_id}: ONVIF "
                                 f"GetSystemDateAndTime failed: {exc}", level=logging.WARNING)
            return None
        self.problems.recovered("onvif", f"camera {ctx.device_id}: ONVIF answers again")
        if abs(skew) > cfg.max_skew:
            ctx.count("clock_skew")
            self.problems.report("skew", f"camera {ctx.device_id}: clock off by {skew:+.0f}s "
                                 f"(more than {cfg.max_skew:g}s)", level=logging.WARNING,
                                 kind="skew")
        else:
            self.problems.recovered("skew", f"camera {ctx.device_id}: clock within "
                                    f"{cfg.max_skew:g}s again")
        return skew

