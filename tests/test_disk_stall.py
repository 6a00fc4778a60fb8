"""A stalled disk under the buffer: ``fsfreeze`` on a loop-mounted ext4 data_dir, so every
write and fsync blocks, as on a card or USB disk that stops answering for a while.

An outside probe froze data_dir for 30-75 s: nothing was logged (only /healthz and
``iotgw status`` showed it), and a stop took until the disk thawed instead of
``shutdown_timeout``, then claimed "5 queued readings lost" that were in the buffer.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gwproc import GatewayProcess
from tests.smallfs import Mounts, frozen, mounted
from tests.support.servers import free_port
from tests.support.wait import eventually_sync


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    yield from mounted(tmp_path)


def write_config(path: Path, data_dir: Path, out: Path, port: int) -> Path:
    path.write_text(
        f"gateway: {{id: gw-s, site: s, data_dir: {data_dir}, shutdown_timeout: 2s}}\n"
        "buffer: {flush_interval: 50ms}\n"
        f"health: {{listen: '127.0.0.1:{port}', commit_stall: 1s, report_interval: 0}}\n"
        f"sinks: [{{type: file, name: out, directory: {out}}}]\n"
        "devices:\n"
        "  - {id: s1, driver: synthetic, interval: 5ms, fields: 4}\n")
    return path


def stall_lines(gw: GatewayProcess) -> int:
    return len([m for m in gw.messages() if "no reading committed" in m])


def test_a_stalled_disk_is_logged_and_a_stop_keeps_its_deadline(
        tmp_path: Path, mounts: Mounts) -> None:
    fs = mounts.ext4(32)
    config = write_config(tmp_path / "gw.yaml", fs, tmp_path / "out", free_port())
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        with frozen(fs):
            stalled = gw.wait_for_log(lambda r: "no reading committed" in r["msg"])
            assert stalled["level"] == "error"
        flowing = gw.wait_for_log(lambda r: "commits flowing again" in r["msg"])
        assert flowing["level"] == "info"
        with frozen(fs):
            eventually_sync(lambda: stall_lines(gw) == 2, what="the second stall logged")
            gw.signal(signal.SIGTERM)
            # All while the disk is still frozen: the stop does not wait for it.
            late = gw.wait_for_log(lambda r: r["msg"].startswith("final commit did not "
                                                                  "complete"))
            assert late["level"] == "error" and "may or may not be stored" in late["msg"]
            gw.wait_for_log(lambda r: r["msg"].startswith("stopped:"))
        assert gw.stop() == 1  # the kernel lets the process go once the disk thaws
    finally:
        gw.kill()
    assert not [m for m in gw.messages() if "lost" in m]
    assert stall_lines(gw) == 2, "once per stall"
    with sqlite3.connect(fs / "buffer.db") as conn:  # the next start finds it whole
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
