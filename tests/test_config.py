"""Config loading: every bad input gets FILE:LINE: path: message, all at once, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.cli import schema_text
from gateway.config.loader import load_config
from gateway.errors import ConfigError
from gateway.registry import load_drivers
from gateway.sinks.file import FileSinkConfig
from gateway.sinks.influxdb import InfluxDBSinkConfig

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ", ".join(f"'{name}'" for name in load_drivers())

GOOD = """\
gateway: {id: gw-1, site: garden}
devices:
  - {id: m1, driver: synthetic, interval: 10s}
"""

# (name, yaml text, expected problems: (line, "path: message")).
BAD_CONFIGS = [
    ("unknown top-level key", GOOD + "sinkz: []\n",
     [(4, "sinkz: unknown key (check the spelling)")]),
    ("typo in device key", """\
gateway: {id: gw-1, site: garden}
devices:
  - id: m1
    driver: synthetic
    intervall: 10s
""", [(5, "devices[0].intervall: unknown key (check the spelling)")]),
    ("missing gateway section", "devices: []\n", [(1, "gateway: required key is missing")]),
    ("missing site", "gateway:\n  id: gw-1\n", [(1, "gateway.site: required key is missing")]),
    ("bad duration", """\
gateway: {id: gw-1, site: garden}
devices:
  - id: m1
    driver: synthetic
    interval: 10 parsecs
""", [(5, "devices[0].interval: expected a duration like 10s, 250ms or 1m30s, got "
          "'10 parsecs'")]),
    ("bad size and policy", """\
gateway: {id: gw-1, site: garden}
buffer:
  max_bytes: lots
  when_full: panic
""", [(3, "buffer.max_bytes: expected a size like 512MiB or 1GB, got 'lots'"),
      (4, "buffer.when_full: must be one of 'drop_oldest' or 'drop_newest', got 'panic'")]),
    ("out of range", """\
gateway: {id: gw-1, site: garden}
devices:
  - {id: m1, driver: synthetic, fields: 500}
""", [(3, "devices[0].fields: must be <= 200, got 500")]),
    ("duplicate device id", """\
gateway: {id: gw-1, site: garden}
devices:
  - {id: m1, driver: synthetic}
  - {id: m2, driver: synthetic}
  - {id: m1, driver: synthetic}
""", [(5, "devices[2].id: duplicate device id 'm1' (first at devices[0])")]),
    ("unknown sink type", """\
gateway: {id: gw-1, site: garden}
sinks:
  - type: kafka
""", [(3, "sinks[0].type: unknown type 'kafka'; expected one of 'file', 'influxdb', 'influxdb1'")]),
    ("duplicate sink names", """\
gateway: {id: gw-1, site: garden}
sinks:
  - {type: file}
  - {type: file}
""", [(4, "sinks[1].name: duplicate sink name 'file' (first at sinks[0]); give each sink "
          "of one type its own name")]),
    ("missing env var", """\
gateway: {id: gw-1, site: garden}
sinks:
  - type: influxdb
    url: http://127.0.0.1:8086
    bucket: b
    token: ${IOTGW_TEST_UNSET_TOKEN}
""", [(6, "sinks[0].token: environment variable IOTGW_TEST_UNSET_TOKEN is not set")]),
    ("secret inline and file", """\
gateway: {id: gw-1, site: garden}
sinks:
  - type: influxdb
    url: http://127.0.0.1:8086
    bucket: b
    token: abc
    token_file: /nonexistent/token
""", [(3, "sinks[0]: set either token or token_file, not both")]),
    ("unreadable secret file", """\
gateway: {id: gw-1, site: garden}
sinks:
  - type: influxdb
    url: http://127.0.0.1:8086
    bucket: b
    token_file: /nonexistent/token
""", [(3, "sinks[0]: cannot read secret file /nonexistent/token: No such file or directory")]),
    ("yaml syntax", "gateway: {id: gw-1, site: garden\ndevices: []\n",
     [(2, "(top): invalid YAML: expected ',' or '}', but got ':'")]),
    ("duplicate yaml key", "gateway: {id: gw-1, site: garden}\ngateway: {id: gw-2, site: x}\n",
     [(2, "gateway: duplicate key 'gateway' (first at line 1)")]),
    ("bad id characters", "gateway: {id: gw/1, site: garden}\n",
     [(1, "gateway.id: must match ^[A-Za-z0-9][A-Za-z0-9_.-]*$, got 'gw/1'")]),
    ("several at once", """\
gateway: {id: gw-1, site: garden}
buffer:
  when_full: panic
devices:
  - id: m1
    driver: synthetic
    interval: soon
  - id: m2
    driver: nope
""", [(3, "buffer.when_full: must be one of 'drop_oldest' or 'drop_newest', got 'panic'"),
      (7, "devices[0].interval: expected a duration like 10s, 250ms or 1m30s, got 'soon'"),
      (9, f"devices[1].driver: unknown driver 'nope'; expected one of {DRIVERS}")]),
    ("per-item and cross-item problems in one run, positions as in the file", """\
gateway: {id: gw-1, site: garden}
sinks:
  - {type: file}
  - {type: kafka}
  - {type: file}
devices:
  - {id: m1, driver: synthetic}
  - {id: m2, driver: synthetic, interval: soon}
  - {id: m3, driver: synthetic}
  - {id: m1, driver: synthetic}
""", [(4, "sinks[1].type: unknown type 'kafka'; expected one of 'file', 'influxdb', "
          "'influxdb1'"),
      (5, "sinks[2].name: duplicate sink name 'file' (first at sinks[0]); give each sink "
          "of one type its own name"),
      (8, "devices[1].interval: expected a duration like 10s, 250ms or 1m30s, got 'soon'"),
      (10, "devices[3].id: duplicate device id 'm1' (first at devices[0])")]),
    ("osdp readers on one line: unique addresses, one speed, not a serial bus's port", """\
gateway: {id: gw-1, site: garden}
buses:
  meters: {type: serial, port: /dev/ttyUSB0}
devices:
  - {id: door-1, driver: osdp, port: /dev/ttyUSB1, address: 1, secure: false}
  - {id: door-2, driver: osdp, port: /dev/ttyUSB1, address: 2, secure: false}
  - {id: door-3, driver: osdp, port: /dev/ttyUSB1, address: 1, secure: false}
  - {id: door-4, driver: osdp, port: /dev/ttyUSB1, address: 4, secure: false, baudrate: 19200}
  - {id: door-5, driver: osdp, port: /dev/ttyUSB0, address: 1, secure: false}
""", [(7, "devices[2]: bus 'osdp line /dev/ttyUSB1' address 1 is already used by 'door-1' "
          "(devices[0])"),
      (8, "devices[3].baudrate: readers on one line share its speed: 'door-1' (devices[0]) "
          "on /dev/ttyUSB1 uses 9600"),
      (9, "devices[4].port: /dev/ttyUSB0 is also the port of bus 'meters'; an OSDP line "
          "cannot share an adapter with other serial devices")]),
    ("a broken section defers the cross-item checks", """\
gateway: {id: gw-1, site: garden}
buffer: {when_full: panic}
devices:
  - {id: m1, driver: synthetic}
  - {id: m1, driver: synthetic}
""", [(2, "buffer.when_full: must be one of 'drop_oldest' or 'drop_newest', got 'panic'")]),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_reports_file_line_path_message(tmp_path: Path, name: str, text: str,
                                                   expected: list[tuple[int, str]]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == [f"{path}:{line}: {msg}" for line, msg in expected]


def test_env_and_secret_file_resolution(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(f"""\
        gateway: {{id: "${{GW_ID}}", site: "${{SITE:-default-site}}", data_dir: data}}
        buffer: {{max_bytes: 2MiB, flush_interval: 250ms}}
        sinks:
          - {{type: influxdb, url: "http://127.0.0.1:1", bucket: b, token_file: {secret}}}
          - {{type: file, name: local, max_file_size: 1.5MiB}}
        """))
    config = load_config(path, environ={"GW_ID": "gw-env"})
    assert config.model.gateway.id == "gw-env"
    assert config.model.gateway.site == "default-site"
    assert config.data_dir == tmp_path / "data"
    assert config.buffer_path == tmp_path / "data" / "buffer.db"
    assert config.model.buffer.max_bytes == 2 * 1024 * 1024
    assert config.model.buffer.flush_interval == 0.25
    influx, local = config.sinks
    assert isinstance(influx, InfluxDBSinkConfig) and isinstance(local, FileSinkConfig)
    assert influx.token is not None and influx.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(influx)
    assert local.max_file_size == int(1.5 * 1024 * 1024)


def test_no_sinks_means_default_file_sink(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    config = load_config(path, environ={})
    assert [(s.type, s.sink_name) for s in config.sinks] == [("file", "file")]


def test_committed_schema_is_in_sync() -> None:
    committed = (ROOT / "config" / "gateway.schema.json").read_text()
    assert json.loads(committed) == json.loads(schema_text()), (
        "config/gateway.schema.json is stale: run `iotgw schema > config/gateway.schema.json`")


def test_schema_describes_devices_and_sinks() -> None:
    schema = json.loads(schema_text())
    assert schema["additionalProperties"] is False
    assert {"gateway", "buffer", "sinks", "mqtt", "buses", "devices"} <= set(schema["properties"])
    text = json.dumps(schema)
    assert '"synthetic"' in text and '"influxdb1"' in text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_check_cli_summary_and_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("check", "config/demo.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "OK (gateway gw-demo, site demo-garden)" in ok.stdout
    assert "synthetic    3" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: gw-1, site: garden}\ndevices:\n  - {id: m1, driver: nope}\n")
    result = run_cli("check", str(bad))
    assert result.returncode == 2
    assert f"{bad}:3: devices[0].driver: unknown driver 'nope'; expected one of {DRIVERS}" \
        in result.stderr
    assert result.stdout == ""


def test_run_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: gw-1}\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2
    assert f"{bad}:1: gateway.site: required key is missing" in result.stderr
    assert not (tmp_path / "buffer.db").exists()


@pytest.mark.parametrize("sample", sorted(ROOT.glob("drivers/*/sample.yaml")) +
                         sorted(ROOT.glob("config/*.yaml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_are_valid(sample: Path) -> None:
    load_config(sample, environ={})
