"""A device address that answers with a redirect (a hijacked camera, a captive proxy, a
misconfigured NVR) must not send the gateway, with its credentials, to another host:
found by the outside probe (a 302 from the alertStream URL was followed to another
host, whose stream was then taken as the camera's events). Real servers on loopback:
the project's Hikvision simulator as the "other host" and a real aiohttp redirector."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiohttp import web

from drivers.event_stream.client import DeviceHttp
from drivers.event_stream.conditions import BadAnswer
from drivers.event_stream.sim import HikvisionSim
from drivers.event_stream.tests.harness import running, write_config


class Redirector:
    """Answers every request with a redirect to ``target`` + the same path."""

    def __init__(self, target: str, status: int = 302) -> None:
        self.target, self.status = target, status
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(status=self.status,
                            headers={"Location": self.target + request.path_qs})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_a_redirected_event_stream_is_not_followed(tmp_path: Path) -> None:
    elsewhere = HikvisionSim(keepalive=0.2)
    await elsewhere.start()
    redirector = Redirector(elsewhere.url)
    await redirector.start()
    config = write_config(tmp_path / "gw.yaml", (
        f"- {{id: term, driver: event_stream, profile: hikvision, host: 127.0.0.1, "
        f"port: {redirector.port}, username: admin, password: hik-pass, "
        f"reconnect_max: 1s, silence: 2s}}\n"))
    try:
        async with running(config) as gw:
            await gw.until(lambda: gw.status("term").last_error is not None,
                           what="the first attempt's outcome")
            assert elsewhere.stream_connects == 0
            assert elsewhere.guard.refused == 0 and elsewhere.guard.accepted == 0
            status = gw.status("term")
            assert status.state != "online"
            assert status.last_error is not None and "redirect" in status.last_error
    finally:
        await redirector.stop()
        await elsewhere.stop()


@pytest.mark.parametrize("auth", ["digest", "basic"])
async def test_a_redirected_request_sends_nothing_to_the_other_host(auth: str) -> None:
    """The same for a single request (ONVIF GetSystemDateAndTime, AcsEvent search)."""
    elsewhere = HikvisionSim(basic=auth == "basic")
    await elsewhere.start()
    redirector = Redirector(elsewhere.url, status=307)
    await redirector.start()
    http = DeviceHttp(f"http://127.0.0.1:{redirector.port}", auth=auth, username="admin",
                      password="hik-pass")
    try:
        with pytest.raises(BadAnswer, match="redirect"):
            await http.request("POST", "/ISAPI/AccessControl/AcsEvent?format=json",
                               data=b"{}", content_type="application/json")
        assert redirector.hits == 1
        assert elsewhere.guard.refused == 0 and elsewhere.guard.accepted == 0
    finally:
        await http.close()
        await redirector.stop()
        await elsewhere.stop()


async def test_basic_auth_over_plain_http_is_warned_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the outside probe: ``auth: basic`` on ``scheme: http`` ran without a
    word, the password crossing the LAN in clear on every reconnect."""
    caplog.set_level(logging.INFO)
    sim = HikvisionSim(basic=True, keepalive=0.2)
    await sim.start()
    config = write_config(tmp_path / "gw.yaml", "".join(
        f"- {{id: {name}, driver: event_stream, profile: hikvision, host: 127.0.0.1, "
        f"port: {sim.port}, auth: basic, username: admin, password: hik-pass, "
        f"channels: [{n}]}}\n" for n, name in ((1, "ch1"), (2, "ch2"))))
    try:
        async with running(config) as gw:
            await gw.until(lambda: sim.guard.accepted >= 1, what="the stream")
    finally:
        await sim.stop()
    warned = [r for r in caplog.records if "in clear" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "hik-pass" not in caplog.text
