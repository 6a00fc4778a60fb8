"""Drivers and sinks are plugins found through entry points (``iotgw.drivers``,
``iotgw.sinks``) and imported only when a config names them; a third-party driver
installed as its own package just works (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.gwproc import ROOT
from tests.support.wait import eventually_sync

HEAVY = ("drivers.", "paho", "pymodbus", "serial", "aiohttp", "influxdb_client", "osdp",
         "rule_engine", "dateutil", "defusedxml", "gateway.alarms.engine",
         "gateway.alarms.journal")


def imported_after(code: str, cwd: Path, extra_path: Path | None = None) -> list[str]:
    """The heavy modules imported by ``code`` in a fresh interpreter."""
    probe = code + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))
        """)
    env = None
    if extra_path is not None:
        import os
        env = {**os.environ, "PYTHONPATH": f"{extra_path}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True,
                         text=True, timeout=120, env=env, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_a_gateway_imports_only_the_plugins_its_config_names(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("gateway: {id: gw, site: s, data_dir: data}\n"
                      "devices: [{id: d1, driver: synthetic, interval: 1s}]\n")
    loaded = imported_after(
        "from gateway.config.loader import load_config\n"
        f"from gateway.runtime import Gateway\nGateway(load_config({str(config)!r}))\n",
        cwd=ROOT)
    assert {m.split(".")[1] for m in loaded if m.startswith("drivers.")} == {"synthetic"}
    assert not [m for m in loaded if not m.startswith("drivers.")], loaded


def test_a_gateway_writing_to_influxdb_loads_no_aiohttp(tmp_path: Path, victoria: Any) -> None:
    """Issue 11: the influxdb sink writes through influxdb-client's synchronous client
    (urllib3, in the sink's thread), so a gateway whose only HTTP user is that sink (no
    health server, no camera_push or event_stream devices) loads no aiohttp at all
    (~9 MiB): checked after the gateway ran and delivered through it."""
    config = tmp_path / "gw.yaml"
    config.write_text("gateway: {id: gw, site: s, data_dir: data}\n"
                      f"sinks: [{{type: influxdb, url: '{victoria.url}', bucket: b}}]\n"
                      "devices: [{id: d1, driver: synthetic, interval: 100ms}]\n")
    loaded = imported_after(textwrap.dedent(f"""
        import asyncio
        from gateway.config.loader import load_config
        from gateway.runtime import Gateway

        async def main():
            gateway = Gateway(load_config({str(config)!r}))
            run = asyncio.create_task(gateway.run())
            while gateway.stats.sink("influxdb").sent_lines == 0:  # the caller's timeout
                await asyncio.sleep(0.05)                           # guards a hang
            gateway.request_stop()
            await run

        asyncio.run(main())
        """), cwd=tmp_path)
    assert "influxdb_client._sync.api_client" in loaded  # it did write
    assert not [m for m in loaded if m.startswith("aiohttp")], loaded
    assert {m.split(".")[1] for m in loaded if m.startswith("drivers.")} == {"synthetic"}


def test_every_installed_plugin_loads_when_the_config_names_an_unknown_one(
        tmp_path: Path) -> None:
    """The error must list every driver there is, so all are loaded for it."""
    config = tmp_path / "gw.yaml"
    config.write_text("gateway: {id: gw, site: s, data_dir: data}\n"
                      "devices: [{id: d1, driver: nosuch}]\n")
    out = subprocess.run([sys.executable, "-m", "gateway", "check", str(config)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    for name in ("cjt188", "dlt645", "modbus", "mqtt", "osdp", "serial_line", "synthetic"):
        assert name in out.stdout + out.stderr, name


def test_a_third_party_driver_installed_as_its_own_package_just_works(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "acme_meter").mkdir(parents=True)
    (site / "acme_meter" / "__init__.py").write_text(textwrap.dedent('''
        """A driver from another package: it reaches the core only through the API."""
        from typing import Literal

        from gateway.driver import DeviceConfigBase, Driver
        from gateway.reading import Reading
        from gateway.registry import register_driver


        class AcmeConfig(DeviceConfigBase):
            driver: Literal["acme"]
            volts: float = 230.0


        class AcmeDriver(Driver):
            async def run(self) -> None:
                import asyncio, time
                while True:
                    await self.ctx.emit([Reading("acme", {}, {"volts": self.config.volts},
                                                 time.time_ns())])
                    await asyncio.sleep(0.05)


        register_driver(AcmeConfig, AcmeDriver)
        '''))
    dist = site / "acme_meter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-meter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[iotgw.drivers]\nacme = acme_meter\n")
    config = tmp_path / "gw.yaml"
    config.write_text("gateway: {id: gw, site: s, data_dir: data}\n"
                      "buffer: {flush_interval: 50ms}\n"
                      "devices: [{id: a1, driver: acme, volts: 231.5}]\n")
    import os
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    check = subprocess.run([sys.executable, "-m", "gateway", "check", str(config)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.Popen([sys.executable, "-m", "gateway", "run", str(config)], cwd=tmp_path,
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = tmp_path / "data" / "lines" / "current.lp"
        eventually_sync(lambda: lines.exists() and b"volts=231.5" in lines.read_bytes(),
                        within=30, every=0.1, what="the third-party driver's reading")
        assert lines.exists() and b"acme,device=a1" in lines.read_bytes()
    finally:
        run.terminate()
        assert run.wait(timeout=30) == 0
