"""The health HTTP endpoint (aiohttp.web): the only module that serves HTTP.

* ``/healthz``: 200 when live, 503 otherwise (for a process supervisor or a probe).
* ``/readyz``: 200 when ready, 503 otherwise.
* ``/metrics``: Prometheus text format.
* ``/status``: the full snapshot as JSON (what ``iotgw status`` prints).

It shares the event loop with everything else, so a stuck loop makes it not answer at
all; probes must use a timeout and treat no answer as unhealthy. The body of
``/healthz``/``/readyz`` names the failing checks, so a curl on site says why.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from gateway.health.metrics import CONTENT_TYPE, render
from gateway.health.snapshot import collect

log = logging.getLogger("iotgw.health")

GATEWAY_KEY: web.AppKey[Any] = web.AppKey("gateway", object)


def build_app(gateway: Any) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/status", _status)
    app.router.add_get("/", _index)
    return app


async def _probe(request: web.Request, verdict: str, checks: str) -> web.Response:
    snap = await collect(request.app[GATEWAY_KEY])
    health = snap["health"]
    ok = health[verdict]
    lines = [f"{'ok' if ok else 'FAIL'}"]
    for name, check in health[checks].items():
        lines.append(f"{'ok  ' if check['ok'] else 'FAIL'} {name}: {check['detail']}")
    if verdict == "ready":  # ready includes live
        for name, check in health["liveness"].items():
            if not check["ok"]:
                lines.append(f"FAIL {name}: {check['detail']}")
    return web.Response(text="\n".join(lines) + "\n", status=200 if ok else 503)


async def _healthz(request: web.Request) -> web.Response:
    return await _probe(request, "live", "liveness")


async def _readyz(request: web.Request) -> web.Response:
    return await _probe(request, "ready", "readiness")


async def _metrics(request: web.Request) -> web.Response:
    snap = await collect(request.app[GATEWAY_KEY])
    response = web.Response(body=render(snap))
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def _status(request: web.Request) -> web.Response:
    snap = await collect(request.app[GATEWAY_KEY])
    return web.Response(text=json.dumps(snap, default=str), content_type="application/json")


async def _index(request: web.Request) -> web.Response:
    return web.Response(text="iotgw: /healthz /readyz /metrics /status\n")


async def serve(gateway: Any, host: str, port: int) -> None:
    """Serve until cancelled. Logs the bound address (port 0 picks one)."""
    runner = web.AppRunner(build_app(gateway), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound = [a for a in runner.addresses if isinstance(a, tuple)]
        real_port = bound[0][1] if bound else port
        url = f"http://{'[' + host + ']' if ':' in host else host}:{real_port}"
        log.info("health endpoint on %s (/healthz /readyz /metrics /status)", url,
                 extra={"health_url": url})
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
