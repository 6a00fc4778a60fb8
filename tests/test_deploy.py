"""Deployment files: systemd unit (exposure via systemd-analyze), install.sh into a temp
root, the container files, mosquitto config and the Grafana dashboard."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from gateway.config.loader import load_config
from gateway.health.selfreport import DEVICE_FIELDS, GATEWAY_FIELDS, SINK_FIELDS
from tests.gwproc import ROOT
from tests.support.mqtt import TestClient
from tests.support.servers import free_port
from tests.support.wait import eventually_sync

DEPLOY = ROOT / "deploy"


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# -- systemd ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_exposure_is_at_most_2() -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(DEPLOY / "iotgw.service")],
        capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for iotgw\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_unit_runs_the_gateway_as_designed() -> None:
    unit = unit_settings(DEPLOY / "iotgw.service")
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"] and unit["Restart"] == ["always"]
    assert unit["User"] == ["iotgw"] and unit["SupplementaryGroups"] == ["dialout"]
    assert unit["StateDirectory"] == ["iotgw"] and unit["ConfigurationDirectory"] == ["iotgw"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["ExecStart"] == [
        "/opt/iotgw/venv/bin/iotgw run /etc/iotgw/gateway.yaml --log-format json"]
    credentials = {v.split(":", 1)[0].lstrip("-") for v in unit["LoadCredential"]}
    assert {"influx-token", "mqtt-password", "pseudonym-key"} <= credentials
    assert any("ttyUSB" in v for v in unit["DeviceAllow"])


# -- install.sh ------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def run_install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "--root", str(root), "--pip-args", "--no-deps",
         *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_install_into_a_temp_root_is_idempotent_and_uninstalls(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = run_install(root)
    assert "skipped (--root): useradd --system" in first.stdout
    assert "skipped (--root): systemctl enable iotgw.service" in first.stdout
    assert "wrote" in first.stdout and "gateway.yaml from the example" in first.stdout

    venv = root / "opt/iotgw/venv"
    check = subprocess.run([str(venv / "bin/python"), "-c",
                            "import gateway, drivers; print(gateway.__version__)"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.strip(), check.stderr
    assert (venv / "bin/iotgw").is_file()
    shipped = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("drivers/*/profiles/*.yaml")}
    (site,) = venv.glob("lib/python*/site-packages")
    assert shipped and shipped == {p.relative_to(site).as_posix()
                                   for p in site.glob("drivers/*/profiles/*.yaml")}
    assert os.readlink(root / "usr/local/bin/iotgw") == "/opt/iotgw/venv/bin/iotgw"
    unit = root / "etc/systemd/system/iotgw.service"
    assert unit.read_bytes() == (DEPLOY / "iotgw.service").read_bytes()
    assert mode(unit) == 0o644
    assert mode(root / "etc/iotgw") == 0o750
    assert mode(root / "etc/iotgw/credentials") == 0o700
    assert mode(root / "var/lib/iotgw") == 0o750
    config = root / "etc/iotgw/gateway.yaml"
    assert mode(config) == 0o640
    assert config.read_text() == (DEPLOY / "gateway.example.yaml").read_text()
    assert (root / "opt/iotgw/share/grafana/dashboards/compound.json").is_file()
    assert not list(ROOT.glob("build")), "the checkout stays clean"

    config.write_text(config.read_text() + "# the installer's edits\n")
    snapshot = {p: p.stat().st_mtime_ns for p in root.rglob("*")
                if p.is_file() and "venv" not in p.parts}
    time.sleep(0.01)
    second = run_install(root)
    assert "kept the existing" in second.stdout and "created" not in second.stdout
    assert config.read_text().endswith("# the installer's edits\n"), "config never overwritten"
    after = {p for p in root.rglob("*") if p.is_file() and "venv" not in p.parts}
    assert after == set(snapshot), "a second run creates or removes nothing"
    assert mode(root / "etc/iotgw") == 0o750 and mode(root / "var/lib/iotgw") == 0o750

    (root / "var/lib/iotgw/buffer.db").write_bytes(b"data")
    run_install(root, "--uninstall")
    assert not (root / "opt/iotgw").exists() and not unit.exists()
    assert not (root / "usr/local/bin/iotgw").is_symlink()
    assert config.exists() and (root / "var/lib/iotgw/buffer.db").exists(), "data kept"
    purge = run_install(root, "--uninstall", "--purge")
    assert "skipped (--root): userdel iotgw" in purge.stdout
    assert not (root / "etc/iotgw").exists() and not (root / "var/lib/iotgw").exists()


def test_example_configs_validate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    example = load_config(DEPLOY / "gateway.example.yaml")
    assert example.model.health is not None and str(example.data_dir) == "/var/lib/iotgw"
    # The compose config reads its secrets from /run/secrets; point them at the repo's.
    text = (DEPLOY / "compose/gateway.yaml").read_text()
    text = text.replace("/run/secrets/", str(DEPLOY / "compose") + "/")
    (tmp_path / "gateway.yaml").write_text(text)
    compose = load_config(tmp_path / "gateway.yaml")
    assert compose.model.health.host == "0.0.0.0" and compose.model.health.port == 9108
    assert compose.model.mqtt is not None and compose.model.mqtt.host == "mosquitto"


# -- container -------------------------------------------------------------------------


def test_dockerfile_is_small_non_root_and_multi_arch_friendly() -> None:
    """Static checks; tests/test_container.py builds the image and runs the gateway in it."""
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "a build stage and a final stage"
    assert all(stage.startswith("${BASE_IMAGE}") for stage in stages), "one base, an ARG"
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    build, final = stages
    assert "COPY wheels/${TARGETARCH}/" in build, "each platform's wheels, built beforehand"
    assert "--no-index --find-links /wheels" in build, "no package index inside the build"
    assert re.search(r"^USER iotgw", final, re.M)
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", final)
    assert "COPY --from=build /opt/iotgw/venv /opt/iotgw/venv" in final
    assert "HEALTHCHECK" in final and "/healthz" in final
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        top = copied.split("$", 1)[0]
        assert f"!{top}" in ignore, f"{top} is kept out of the build context"
        if not top.startswith("wheels/"):
            assert (ROOT / copied).exists(), copied


def test_compose_file_is_consistent() -> None:
    compose = YAML(typ="safe").load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "influxdb", "grafana", "gateway"}
    named_volumes = set(compose["volumes"])
    secrets = set(compose["secrets"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} missing"
            else:
                assert source in named_volumes, f"{name}: undeclared volume {source}"
        for secret in service.get("secrets", []):
            assert secret in secrets, f"{name}: undeclared secret {secret}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    for secret in compose["secrets"].values():
        assert (DEPLOY / secret["file"]).is_file()
    gateway = services["gateway"]
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).is_file()
    command = gateway["command"]
    assert command[0] == "demo" and "--no-view" in command

    def flag(name: str) -> str:
        return command[command.index(name) + 1]

    assert flag("--influx-url") == "http://influxdb:8086"
    assert flag("--influx-token-file") == "/run/secrets/influx-token"
    assert flag("--mqtt-password-file") == "/run/secrets/mqtt-password"
    assert {"influx-token", "mqtt-password"} <= set(gateway["secrets"])
    assert flag("--health-listen").endswith(":9108")
    assert "./compose/gateway.yaml:/etc/iotgw/gateway.yaml:ro" in gateway["volumes"]
    env = services["influxdb"]["environment"]
    gateway_config = YAML(typ="safe").load((DEPLOY / "compose/gateway.yaml").read_text())
    sink = gateway_config["sinks"][0]
    assert (sink["org"], sink["bucket"]) == (env["DOCKER_INFLUXDB_INIT_ORG"],
                                             env["DOCKER_INFLUXDB_INIT_BUCKET"])
    assert (flag("--influx-org"), flag("--influx-bucket")) == (sink["org"], sink["bucket"])
    assert flag("--mqtt-username") == gateway_config["mqtt"]["username"]
    datasource = YAML(typ="safe").load(
        (DEPLOY / "grafana/provisioning/datasources/influxdb.yaml").read_text())["datasources"][0]
    assert datasource["jsonData"]["organization"] == env["DOCKER_INFLUXDB_INIT_ORG"]
    assert datasource["jsonData"]["defaultBucket"] == env["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert gateway_config["mqtt"]["username"] in (DEPLOY / "mosquitto/passwords").read_text()


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
def test_compose_config_with_the_docker_cli_when_an_engine_runs() -> None:
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    if info.returncode != 0:
        pytest.skip("no Docker engine here")
    result = subprocess.run(["docker", "compose", "-f", str(DEPLOY / "docker-compose.yml"),
                             "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- mosquitto ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="needs mosquitto")
@contextlib.contextmanager
def deploy_broker(tmp_path: Path, acl: str | None = None) -> Iterator[int]:
    """deploy/mosquitto as shipped (or with another ACL text) on a free loopback port."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = (DEPLOY / "mosquitto/mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/config/", str(DEPLOY / "mosquitto") + "/")
    conf = conf.replace("/mosquitto/data/", str(tmp_path) + "/")
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    if acl is not None:
        (tmp_path / "acl").write_text(acl)
        conf = conf.replace(str(DEPLOY / "mosquitto/acl"), str(tmp_path / "acl"))
    # As root, mosquitto drops to user "mosquitto", which cannot read our temp dir.
    conf += f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
    (tmp_path / "m.conf").write_text(conf)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([binary, "-c", str(tmp_path / "m.conf")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        eventually_sync(lambda: _client(port, "mosquitto_pub", "ops", "demo-ops", "-t",
                                        "compound/x", "-m", "1").wait(10) == 0,
                        within=60, every=0.1, what="the deploy broker answering")
        yield port
    finally:
        broker.terminate()
        broker.wait(10)


def _client(port: int, tool: str, user: str, password: str, *args: str
            ) -> subprocess.Popen[str]:
    return subprocess.Popen([tool, "-h", "127.0.0.1", "-p", str(port), "-u", user,
                             "-P", password, "-V", "mqttv311", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_mosquitto_config_and_acl_work(tmp_path: Path) -> None:
    with deploy_broker(tmp_path) as port:
        ops = TestClient(port, "ops", "demo-ops")
        ops.subscribe("compound/#", 1)  # returns with the SUBACK: the subscription is active
        own = "compound/demo-garden/gw-demo/status"
        other = "compound/demo-garden/gw-other/status"
        for topic in (own, other):
            assert _client(port, "mosquitto_pub", "gw-demo", "demo-gateway", "-t", topic,
                           "-m", "online").wait(10) == 0
        bad = _client(port, "mosquitto_pub", "gw-demo", "wrong", "-t", own, "-m", "x")
        assert bad.wait(10) != 0, "wrong password refused"
        eventually_sync(lambda: ops.on(own), within=10, what=f"{own} from the broker")
        ops.close()
    assert b"online" in ops.on(own)
    assert not ops.on(other), "a gateway may publish only below its own id"


def _publish_v5(port: int, topic: str) -> int:
    """The broker's PUBACK reason code for a QoS 1 publish by gateway gw-demo (135: not
    authorised)."""
    client = TestClient(port, "gw-demo", "demo-gateway", client_id="acl-check")
    try:
        info = client.publish(topic, b"{}", qos=1, retain=True)
        info.wait_for_publish(10)
        return int(client.puback(info.mid, within=10).value)
    finally:
        client.close()


def test_acl_line_for_home_assistant_discovery(tmp_path: Path) -> None:
    """The commented ACL line, once uncommented, lets a gateway write its own discovery
    configs (docs/topics.md) and nobody else's; as shipped, it writes none."""
    shipped = (DEPLOY / "mosquitto/acl").read_text()
    line = "# pattern write homeassistant/sensor/%u/#"
    assert line in shipped
    own = "homeassistant/sensor/gw-demo/m1_energy_meter_power/config"
    other = "homeassistant/sensor/gw-other/m1_energy_meter_power/config"
    with deploy_broker(tmp_path / "shipped") as port:
        assert _publish_v5(port, own) == 135, "shipped ACL: discovery is opt-in"
    with deploy_broker(tmp_path / "enabled", shipped.replace(line, line[2:])) as port:
        assert _publish_v5(port, own) in (0, 16)  # accepted (16: no subscriber yet)
        assert _publish_v5(port, other) == 135, "only below its own gateway id"


# -- Grafana -----------------------------------------------------------------------------


def produced_fields() -> dict[str, set[str]]:
    """Measurement -> fields the gateway and its drivers produce (from their own tables)."""
    from drivers.cjt188.data import LAYOUTS
    from drivers.dlt645.points import POINTS_2007

    fields: dict[str, set[str]] = {
        "gateway_stats": set(GATEWAY_FIELDS), "gateway_sink": set(SINK_FIELDS),
        "device_status": set(DEVICE_FIELDS),
        "energy_meter": set(POINTS_2007), "water_meter": set(),
        "access_event": set(), "vehicle_event": set(),
    }
    fields["water_meter"] |= {item.name for item in LAYOUTS["volume"]}
    yaml = YAML(typ="safe")
    for profile in ROOT.glob("drivers/*/profiles/*.yaml"):
        doc = yaml.load(profile.read_text())
        measurement = doc.get("measurement")
        if measurement in fields:
            points = doc.get("points") or []
            names = [p["name"] for p in points] if isinstance(points, list) else []
            names += list((doc.get("fields") or {}).keys())
            fields[measurement] |= set(names)
    return fields


def test_dashboard_panels_query_what_the_gateway_produces() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/compound.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ("Energy per building", "Water use per building", "Gate events per hour",
                   "Plate events per hour", "Device state", "Buffer depth", "Sink lag"):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    produced = produced_fields()
    seen: set[str] = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "iotgw-influx"
        for target in panel["targets"]:
            query = target["query"]
            assert query.startswith('from(bucket: "${bucket}")'), panel["title"]
            measurements = re.findall(r'r\._measurement == "(\w+)"', query)
            assert measurements, panel["title"]
            for measurement in measurements:
                assert measurement in produced, (panel["title"], measurement)
                seen.add(measurement)
            known = set().union(*(produced[m] for m in measurements))
            for field in re.findall(r'r\._field == "(\w+)"', query):
                assert field in known, (panel["title"], field)
    assert seen == set(produced), "every measurement has a panel"
    provider = YAML(typ="safe").load(
        (DEPLOY / "grafana/provisioning/dashboards/iotgw.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
