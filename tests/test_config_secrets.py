"""Credentials in sink URLs: accepted alone (influxdb1), refused twice, never shown.

Issue 10: ``iotgw check`` printed ``user:password@`` URLs, and an influxdb1 URL with
``user:pw@`` plus ``username`` passed ``check`` but crash-looped the sink task.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.config.loader import load_config
from gateway.errors import SinkAuthError, SinkUnavailable
from gateway.sinks.influxdb1 import InfluxDB1Sink, InfluxDB1SinkConfig
from gateway.urls import redact_text, redact_url
from tests.gwproc import ROOT

HEADER = "gateway: {id: gw-t, site: s, data_dir: data}\n"
SECRET = "hunter2-Secret"


def influxdb1_config(path: Path) -> InfluxDB1SinkConfig:
    """The config's one sink, an influxdb1 one."""
    config = load_config(path, environ={}).sinks[0]
    assert isinstance(config, InfluxDB1SinkConfig)
    return config


def check(tmp_path: Path, sinks: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + "sinks:\n" + sinks)
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_check_summary_masks_url_passwords(tmp_path: Path) -> None:
    result = check(tmp_path, f"""\
  - {{type: influxdb1, name: a, url: 'http://admin:{SECRET}@db.example:8086/', database: d}}
  - {{type: influxdb1, name: b, url: 'http://gw:p%2F{SECRET}@db.example:8086', database: d}}
""")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "http://admin:***@db.example:8086/" in result.stdout
    assert "http://gw:***@db.example:8086" in result.stdout


@pytest.mark.parametrize(("url", "why"), [
    # found by an outside probe: each passed check, then failed at run time or leaked
    (f"https://db.example/x?u=gw&p={SECRET}&x=1", "no query string"),
    (f"http://vm.example:8428/?token={SECRET}", "no query string"),
    (f"http://gw:pa/{SECRET}@db.example:8086", "percent-encoded"),
    (f"http://gw:pa#{SECRET}@db.example:8086", "percent-encoded"),
    (f"http://gw:{SECRET} x@db.example:8086", ""),
    ("http://db.example:99999", "port"),
])
def test_unusable_sink_urls_are_refused_without_their_secret(
        tmp_path: Path, url: str, why: str) -> None:
    result = check(tmp_path, f"  - {{type: influxdb1, url: '{url}', database: d}}\n")
    assert result.returncode == 2, result.stdout
    assert SECRET not in result.stdout + result.stderr, result.stderr
    assert why in result.stderr and "Traceback" not in result.stderr


def test_config_errors_quoting_a_url_mask_its_password(tmp_path: Path) -> None:
    result = check(tmp_path, f"  - {{type: influxdb1, url: 'ftp://u:{SECRET}@h/', database: d}}\n")
    assert result.returncode == 2
    assert SECRET not in result.stderr and "ftp://u:***@h/" in result.stderr, result.stderr


def test_url_credentials_and_username_together_are_refused_at_their_line(
        tmp_path: Path) -> None:
    result = check(tmp_path, f"""\
  - type: influxdb1
    url: 'http://admin:{SECRET}@127.0.0.1:8086'
    database: d
    username: admin
  - {{type: influxdb, url: 'http://admin:{SECRET}@127.0.0.1:8428', bucket: b}}
""")
    assert result.returncode == 2
    path = tmp_path / "gw.yaml"
    assert result.stderr.splitlines()[:2] == [
        f"{path}:3: sinks[0]: credentials are given twice, in url (user:password@) and as "
        "username/password: keep one (username with password_file keeps the secret out of "
        "the config)",
        f"{path}:7: sinks[1].url: the influxdb sink takes credentials as token or token_file, "
        "not as user:password@ in the url"], result.stderr
    assert SECRET not in result.stderr


async def test_influxdb1_url_credentials_alone_authenticate(tmp_path: Path,
                                                            influx1_factory: Any) -> None:
    """What the crash-looping config wanted: URL credentials work (sent as Basic auth),
    and failures never quote the password."""
    server = influx1_factory(username="gwadmin", password=SECRET)
    db = f"urlauth_{uuid.uuid4().hex[:8]}"
    server.create_database(db)
    host = server.url.split("://", 1)[1]
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + f"sinks: [{{type: influxdb1, url: 'http://gwadmin:{SECRET}@{host}', "
                    f"database: {db}}}]\n")
    sink = InfluxDB1Sink(influxdb1_config(path))
    await sink.open()
    try:
        await sink.write(b"m v=5 1700000000000000000")
    finally:
        await sink.close()
    assert server.select("SELECT v FROM m", db) == [{"time": 1700000000000000000, "v": 5}]

    path.write_text(HEADER + f"sinks: [{{type: influxdb1, url: 'http://gwadmin:wrong-{SECRET}@"
                    f"{host}', database: {db}}}]\n")
    wrong = InfluxDB1Sink(influxdb1_config(path))
    await wrong.open()
    try:
        with pytest.raises(SinkAuthError) as caught:
            await wrong.write(b"m v=6 1700000000000000001")
    finally:
        await wrong.close()
    assert "HTTP 401" in str(caught.value) and SECRET not in str(caught.value)


async def test_unreachable_sink_error_does_not_quote_url_password(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + f"sinks: [{{type: influxdb1, url: 'http://u:{SECRET}@127.0.0.1:9', "
                    "database: d, timeout: 2s}]\n")
    sink = InfluxDB1Sink(influxdb1_config(path))
    await sink.open()
    try:
        with pytest.raises(SinkUnavailable) as caught:
            await sink.write(b"m v=1 1")
    finally:
        await sink.close()
    assert SECRET not in str(caught.value) and "127.0.0.1:9" in str(caught.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://h:8086", "http://h:8086"),
    ("http://user@h", "http://user@h"),
    (f"http://user:{SECRET}@h:1/p?db=x", "http://user:***@h:1/p?db=x"),
    (f"http://h/?api_key={SECRET}&Token={SECRET}&db=a", "http://h/?api_key=***&Token=***&db=a"),
    ("http://[::1", "***"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_text(f"got '{url}' here") == f"got '{shown}' here"
