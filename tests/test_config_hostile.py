"""Hostile config files: ``iotgw check`` refuses each with a line, a running gateway's
SIGHUP reload rejects each and goes on committing; aliases and merges still work."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.synthetic.config import SyntheticConfig
from gateway.config.loader import load_config
from gateway.config.yamlsource import MAX_BYTES
from gateway.errors import ConfigError
from tests.gwproc import ROOT, GatewayProcess
from tests.hostile_configs import HEADER, HOSTILE


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_check_refuses_hostile_file_with_line_and_exit_2(tmp_path: Path, name: str) -> None:
    text, line, message = HOSTILE[name]
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + text)
    result = run_check(path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 2, result.stderr[-3000:]
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{path}:{line}: ") and message in first, result.stderr


def test_sighup_with_hostile_files_keeps_gateway_up_and_committing(tmp_path: Path) -> None:
    """Every hostile file in turn on one running gateway: each reload is rejected with one
    ERROR line, the gateway stays up, and readings keep being committed throughout."""
    config = tmp_path / "gw.yaml"
    good = HEADER + "buffer: {flush_interval: 50ms}\ndevices:\n" \
        "  - {id: steady, driver: synthetic, interval: 20ms}\n"
    config.write_text(good)
    gw = GatewayProcess(config).start()
    committed_at: list[int] = []
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        for name, (text, _line, message) in HOSTILE.items():
            config.write_text(HEADER + text)
            seen = len(gw.records)
            gw.signal(signal.SIGHUP)
            def rejected_since(r: dict[str, Any], seen: int = seen) -> bool:
                return r["msg"].startswith("reload rejected") and gw.records.index(r) >= seen

            rejected = gw.wait_for_log(rejected_since)
            assert rejected["level"] == "error" and message in rejected["msg"], (name, rejected)
            assert gw.proc is not None and gw.proc.poll() is None, f"gateway died on {name}"
            committed_at.append(len(lines_of(tmp_path / "data")))
        config.write_text(good)
        time.sleep(0.5)
    finally:
        assert gw.stop() == 0, "".join(gw.raw[-30:])
    final = gw.wait_for_log(lambda r: r["msg"].startswith("stopped:"))
    assert final["readings_committed"] == final["readings_in"] > 0
    delivered = lines_of(tmp_path / "data")
    assert len(delivered) > committed_at[-1] > committed_at[0], \
        "readings stopped flowing while reloads were rejected"
    rejections = [r for r in gw.records if r["msg"].startswith("reload rejected")]
    assert len(rejections) == len(HOSTILE), "each rejected reload is logged exactly once"
    assert not any("Traceback" in line for line in gw.raw)


def lines_of(data_dir: Path) -> list[bytes]:
    out: list[bytes] = []
    for path in sorted((data_dir / "lines").glob("*.lp")):
        out.extend(line for line in path.read_bytes().split(b"\n") if line)
    return out


def test_aliases_and_merge_keys_work_and_errors_point_at_the_anchor(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + textwrap.dedent("""\
        devices:
          - &meter {id: m1, driver: synthetic, interval: 2s, tags: &tags {building: "7"}}
          - <<: *meter
            id: m2
            fields: 3
          - {<<: [{id: m3}, *meter], tags: *tags}
        """))
    config = load_config(path, environ={})
    _, m2, m3 = config.devices
    assert isinstance(m2, SyntheticConfig) and isinstance(m3, SyntheticConfig)
    assert (m2.id, m2.interval, m2.fields, m2.tags) == ("m2", 2.0, 3, {"building": "7"})
    assert (m3.id, m3.interval, m3.tags) == ("m3", 2.0, {"building": "7"})
    path.write_text(HEADER + textwrap.dedent("""\
        devices:
          - &meter {id: m1, driver: synthetic, intervall: 2s}
          - {<<: *meter, id: m2}
        """))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.problems == [
        f"{path}:3: devices[0].intervall: unknown key (check the spelling)",
        f"{path}:3: devices[1].intervall: unknown key (check the spelling)"]


def test_config_larger_than_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    filler = "# " + "x" * 1000 + "\n"
    path.write_text(HEADER + filler * (MAX_BYTES // len(filler) + 1))
    result = run_check(path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[0] == (
        f"{path}: the file is larger than 4 MiB, the most a config may be "
        "(a compound of 25,000 devices fits)")
    path.write_text(HEADER + filler * (MAX_BYTES // len(filler) - 1))
    assert run_check(path).returncode == 0
