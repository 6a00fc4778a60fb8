"""The gateway as a user installs it: a wheel built from the sources, installed
non-editable (with its declared dependencies, from the configured package index) into a
fresh venv outside the checkout, run from a directory that holds no source tree.

The rest of the suite imports ``gateway`` and ``drivers`` from the checkout, so it cannot
see what the wheel leaves out: the shipped profiles once lived in ``config/``, outside the
packages, and every installed copy failed ``check`` with "known: none" (issue 10).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.gwproc import ROOT, GatewayProcess
from tests.support.wait import eventually_sync

# What install.sh and the Dockerfile hand to pip; the rest of the checkout is not shipped.
SHIPPED_SOURCES = ("pyproject.toml", "README.md", "gateway", "drivers", "demo")
NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".*")

# Every config the project ships as an example, by path in the checkout.
SAMPLES = sorted(
    [*(p.relative_to(ROOT).as_posix() for p in ROOT.glob("drivers/*/sample.yaml")),
     "config/demo.yaml", "deploy/gateway.example.yaml", "deploy/compose/gateway.yaml"])
# Files a sample reads at check time, as the container would mount them.
SAMPLE_FILES = {"deploy/compose/gateway.yaml": {"/run/secrets/": "deploy/compose"}}

# A device that uses profile ``name`` of a driver, as an installer writes it.
PROFILE_DEVICE: dict[str, Callable[[str, int], dict[str, Any]]] = {
    "modbus": lambda name, i: {"id": f"modbus-{i}", "driver": "modbus", "bus": "plant",
                               "unit": i + 1, "profile": name},
    "mqtt": lambda name, i: {"id": f"mqtt-{i}", "driver": "mqtt", "profile": name},
}


def shipped_profiles() -> dict[str, list[str]]:
    """Driver -> the profile names in its ``profiles/`` folder in the checkout."""
    found: dict[str, list[str]] = {}
    for path in sorted(ROOT.glob("drivers/*/profiles/*.yaml")):
        found.setdefault(path.parent.parent.name, []).append(path.stem)
    return found


def clean_env() -> dict[str, str]:
    """The caller's environment minus anything that points Python at the checkout."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}


class Installed:
    """A venv holding the built wheel, and a working directory away from the sources."""

    def __init__(self, base: Path) -> None:
        src, wheels = base / "src", base / "wheels"
        self.venv, self.work = base / "venv", base / "work"
        self.work.mkdir()
        src.mkdir()
        for name in SHIPPED_SOURCES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, src / name, ignore=NOT_SHIPPED)
            else:
                shutil.copy2(source, src / name)
        self.pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(src))
        (wheel,) = wheels.glob("iotgw-*.whl")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(self.venv)],
                       check=True, timeout=600)
        self.pip("--python", str(self.venv / "bin/python"), "install", str(wheel))

    def pip(self, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
            cwd=self.work, env=clean_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr

    def run(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin/iotgw"), *args], cwd=self.work,
                              env={**clean_env(), **(env or {})}, capture_output=True,
                              text=True, timeout=600)


class InstalledGateway(GatewayProcess):
    """``iotgw run`` from the venv's console script, started in the work directory."""

    def __init__(self, installed: Installed, config: Path) -> None:
        super().__init__(config)
        self.installed = installed
        self.env = clean_env()

    def start(self) -> InstalledGateway:
        self.proc = subprocess.Popen(
            [str(self.installed.venv / "bin/iotgw"), "run", str(self.config),
             "--log-format", "json"],
            cwd=self.installed.work, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("installed")
    assert not base.is_relative_to(ROOT), "the install must live outside the checkout"
    return Installed(base)


def test_code_is_imported_from_the_venv_not_the_checkout(installed: Installed) -> None:
    result = subprocess.run(
        [str(installed.venv / "bin/python"), "-c",
         "import gateway, drivers.modbus.profiles as m, drivers.mqtt.config as q;"
         "print(gateway.__file__); print(m.__file__); print(q.__file__)"],
        cwd=installed.work, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    files = [Path(line) for line in result.stdout.splitlines()]
    assert len(files) == 3
    for file in files:
        assert file.is_relative_to(installed.venv) and not file.is_relative_to(ROOT), file
    assert not (installed.work / "gateway").exists() and not (installed.work / "drivers").exists()


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_shipped_sample_checks(installed: Installed, sample: str) -> None:
    text = (ROOT / sample).read_text()
    for mount, folder in SAMPLE_FILES.get(sample, {}).items():
        copies = installed.work / folder
        shutil.copytree(ROOT / folder, copies, dirs_exist_ok=True)
        text = text.replace(mount, f"{copies}/")
    config = installed.work / sample
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    result = installed.run("check", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": OK (gateway " in result.stdout


def test_every_shipped_profile_loads(installed: Installed) -> None:
    profiles = shipped_profiles()
    assert set(profiles) == set(PROFILE_DEVICE), \
        f"profiles ship for {sorted(profiles)}; PROFILE_DEVICE says how to use each driver's"
    devices = [PROFILE_DEVICE[driver](name, i)
               for driver, names in profiles.items() for i, name in enumerate(names)]
    config = installed.work / "profiles.yaml"
    config.write_text(json.dumps({  # JSON is YAML; one key a line, so errors name the device
        "gateway": {"id": "gw-installed", "site": "test-site",
                    "data_dir": str(installed.work / "profiles-data")},
        "buses": {"plant": {"type": "tcp", "host": "127.0.0.1", "port": 1502}},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "base_topic": "compound/test/gw"},
        "devices": devices,
    }, indent=1))
    result = installed.run("check", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"devices:  {len(devices)} enabled" in result.stdout, result.stdout
    assert len(profiles["modbus"]) >= 4 and len(profiles["mqtt"]) >= 4


def test_installer_profile_folders_come_first(installed: Installed) -> None:
    """``$IOTGW_PROFILES`` still works for an installed copy, next to the shipped ones."""
    folder = installed.work / "my-profiles"
    folder.mkdir()
    (folder / "site-meter.yaml").write_text(
        "name: site-meter\nsource: the installer's register sheet\nmeasurement: energy_meter\n"
        "points: [{name: energy_total, table: input, address: 0, type: float32}]\n")
    config = installed.work / "installer-profiles.yaml"
    device = "{{id: m{0}, driver: modbus, bus: plant, unit: {0}, profile: {1}}}"
    head = ("gateway: {id: gw-installed, site: test-site, data_dir: installer-data}\n"
            "buses: {plant: {type: tcp, host: 127.0.0.1, port: 1502}}\ndevices:\n")
    env = {"IOTGW_PROFILES": str(folder)}
    config.write_text(head + "".join(f"  - {device.format(unit, name)}\n" for unit, name in
                                     enumerate(("site-meter", "eastron-sdm630"), 1)))
    ok = installed.run("check", str(config), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    config.write_text(head + f"  - {device.format(1, 'no-such-meter')}\n")
    bad = installed.run("check", str(config), env=env)
    assert bad.returncode == 2
    known = bad.stdout + bad.stderr
    assert "unknown profile 'no-such-meter'; known: " in known
    assert "site-meter" in known and "eastron-sdm630" in known, known


def test_run_writes_line_protocol_and_stops_cleanly_on_sigterm(installed: Installed) -> None:
    data = installed.work / "run-data"
    config = installed.work / "run.yaml"
    config.write_text(
        "gateway: {id: gw-installed, site: test-site, data_dir: run-data}\n"
        "sinks: [{type: file, name: local}]\n"
        "devices:\n"
        "  - {id: synth-1, driver: synthetic, measurement: installed_check, interval: 100ms,\n"
        "     fields: 2, tags: {building: '1'}}\n")
    gw = InstalledGateway(installed, config).start()
    try:
        lines = wait_for_lines(gw, data / "lines", "installed_check,")
    finally:
        code = gw.stop()
    assert code == 0, "".join(gw.raw[-30:])
    first = lines[0]
    assert first.startswith("installed_check,") and "device=synth-1" in first, first
    assert first.rsplit(" ", 1)[1].isdigit(), f"a nanosecond timestamp: {first}"


def test_demo_runs_from_the_wheel(installed: Installed) -> None:
    """``iotgw demo`` is a command of the demo/ package (an ``iotgw.commands`` entry
    point) composing the drivers' simulators: all of it ships in the wheel."""
    data = installed.work / "demo-data"
    result = installed.run("demo", "--no-view", "--duration", "12", "--swipe-every", "2",
                           "--data-dir", str(data))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo stopped:" in result.stdout
    for measurement in ("energy_meter", "water_meter", "access_event"):
        assert measurement in result.stdout, result.stdout
    assert any(data.glob("lines/*.lp"))


def wait_for_lines(gw: GatewayProcess, folder: Path, prefix: str) -> list[str]:
    """Lines starting with ``prefix`` in the file sink's folder; the deadline is a hang
    guard only (a gateway that never writes fails here instead of hanging the suite)."""

    def lines() -> list[str]:
        assert gw.proc is not None
        if gw.proc.poll() is not None:
            raise AssertionError(f"gateway exited ({gw.proc.returncode}):\n"
                                 + "".join(gw.raw[-30:]))
        text = "".join(p.read_text() for p in sorted(folder.glob("*.lp")))
        return [line for line in text.splitlines() if line.startswith(prefix)]

    return eventually_sync(lines, within=120, every=0.1,
                           what=lambda: "line protocol on disk:\n" + "".join(gw.raw[-30:]))
