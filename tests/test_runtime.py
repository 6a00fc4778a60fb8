"""The ``iotgw run`` process: signals, shutdown, reload, default file sink."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.gwproc import ROOT, GatewayProcess
from tests.support.files import file_lines
from tests.support.wait import eventually_sync


def write_config(path: Path, devices: str, extra: str = "") -> None:
    path.write_text(textwrap.dedent("""\
        gateway: {id: gw-t, site: test-site, data_dir: data}
        buffer: {flush_interval: 50ms}
        """) + extra + "devices:\n" + textwrap.dedent(devices))


def pending_in_buffer(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "buffer.db") as conn:
        (held,) = conn.execute("SELECT COALESCE(SUM(n), 0) FROM chunks").fetchone()
    return int(held)


def test_sigterm_commits_every_reading_and_exits_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    write_config(config, """\
        - {id: fast-1, driver: synthetic, interval: 1ms, fields: 3}
        - {id: fast-2, driver: synthetic, interval: 1ms, fields: 3, tags: {building: "9"}}
        """)
    gw = GatewayProcess(config).start()
    gw.wait_for_log(lambda r: "running" in r["msg"])
    time.sleep(1.5)
    assert gw.stop() == 0
    final = gw.wait_for_log(lambda r: r["msg"].startswith("stopped:"))
    received, committed = final["readings_in"], final["readings_committed"]
    assert received > 500
    assert committed == received, "readings accepted but not committed at shutdown"
    data = tmp_path / "data"
    delivered = file_lines(data)
    assert len(delivered) + pending_in_buffer(data) == committed
    assert all(b",site=test-site" in line and b"gateway=gw-t" in line for line in delivered)
    assert any(b"building=9,device=fast-2" in line for line in delivered)


def fifo_reader_waiting(fifo: Path) -> int:
    """A write end of ``fifo`` once the gateway has opened it to read its config: then
    the test knows where the gateway is (inside the config read, which waits for us)."""

    def open_writer() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return None
            raise

    fd: int = eventually_sync(open_writer, until=lambda fd: fd is not None,
                              what="the gateway to open its config file")
    os.set_blocking(fd, True)
    return fd


def write_and_close(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_a_sighup_while_starting_is_a_reload_once_running(tmp_path: Path) -> None:
    """A HUP before the event loop's handler ended the process with rc 129 (an outside
    probe, 0.1 s after start). The config file is a FIFO, so the HUP is sent while the
    gateway is reading it (after ``iotgw run``'s early disposition, before the loop's):
    the file may change after that read, so the gateway must read it again once running.
    Without the fix the HUP was ignored and the second read never came."""
    config = tmp_path / "gw.yaml"
    os.mkfifo(config)
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    write_config(first, "- {id: first, driver: synthetic, interval: 20ms}\n")
    write_config(second, """\
        - {id: first, driver: synthetic, interval: 20ms}
        - {id: added, driver: synthetic, interval: 20ms}
        """)
    gw = GatewayProcess(config).start()
    try:
        reading = fifo_reader_waiting(config)
        gw.signal(signal.SIGHUP)
        write_and_close(reading, first.read_bytes())
        gw.wait_for_log(lambda r: "running" in r["msg"])  # the first read is over
        write_and_close(fifo_reader_waiting(config), second.read_bytes())  # the reload
        reloaded = gw.wait_for_log(lambda r: r["msg"].startswith("config reloaded"))
        assert reloaded["msg"].startswith("config reloaded: 0 devices restarted or removed")
        gw.wait_for_log(lambda r: "SIGHUP while starting" in r["msg"])
        eventually_sync(lambda: any(b"device=added" in line
                                    for line in file_lines(tmp_path / "data")),
                        what="readings of the device the second read added")
    finally:
        code = gw.stop()
    assert code == 0


def test_sighup_reload_applies_good_config_and_rejects_bad(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    write_config(config, "- {id: keep, driver: synthetic, interval: 20ms}\n")
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        write_config(config, """\
            - {id: keep, driver: synthetic, interval: 20ms}
            - {id: added, driver: synthetic, interval: 20ms, measurement: water_meter}
            """)
        gw.signal(signal.SIGHUP)
        reloaded = gw.wait_for_log(lambda r: r["msg"].startswith("config reloaded"))
        config.write_text(config.read_text() + "- {id: broken, driver: synthetic, fields: 0}\n")
        gw.signal(signal.SIGHUP)
        rejected = gw.wait_for_log(lambda r: r["msg"].startswith("reload rejected"))
        assert "devices[2].fields: must be >= 1, got 0" in rejected["msg"]
        time.sleep(0.5)
        before = time.time_ns()
        time.sleep(0.5)
    finally:
        assert gw.stop() == 0
    lines = file_lines(tmp_path / "data")

    def newest(device: bytes) -> int:
        return max(int(line.rsplit(b" ", 1)[1]) for line in lines if b"device=" + device in line)

    assert newest(b"added") > before and newest(b"keep") > before, \
        "devices stopped after the rejected reload"
    assert any(line.startswith(b"water_meter,device=added") for line in lines)
    # Reload stops (silently) exactly the devices whose config changed, and says how many.
    assert reloaded["msg"].startswith("config reloaded: 0 devices restarted or removed"), \
        f"an unchanged device was restarted by reload: {reloaded['msg']}"


def test_corrupt_buffer_is_moved_aside_and_gateway_runs(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    write_config(config, "- {id: after-corruption, driver: synthetic, interval: 20ms}\n")
    data = tmp_path / "data"
    data.mkdir()
    garbage = b"this is not an SQLite database, it is what a bad SD card left behind" * 50
    (data / "buffer.db").write_bytes(garbage)
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        moved = gw.wait_for_log(lambda r: r["level"] == "error" and "corrupt" in r["msg"])
        time.sleep(0.5)
    finally:
        assert gw.stop() == 0
    aside = list(data.glob("buffer.db.corrupt-*"))
    assert [p.read_bytes() for p in aside] == [garbage], moved["msg"]
    assert any(b"device=after-corruption" in line for line in file_lines(data))


def test_buffer_stats_cli_reads_a_live_buffer(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    write_config(config, "- {id: stats-1, driver: synthetic, interval: 10ms}\n",
                 extra="sinks:\n  - {type: influxdb1, name: nowhere, url: "
                       "'http://127.0.0.1:9', database: x}\n")
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        time.sleep(1.0)
        result = subprocess.run([sys.executable, "-m", "gateway", "buffer", "stats",
                                 str(config)], capture_output=True, text=True, timeout=60)
    finally:
        assert gw.stop() == 0
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("nowhere"))
    lag = int(row.split()[1])
    assert lag > 20, result.stdout


def test_a_second_gateway_on_the_same_buffer_refuses_to_start(tmp_path: Path) -> None:
    """Found by an outside probe: two `iotgw run` on one config both ran, duplicating
    lines and rotating each other's files. The lock dies with its process (kill -9)."""
    config = tmp_path / "gw.yaml"
    write_config(config, "- {id: one, driver: synthetic, interval: 20ms}\n")
    first = GatewayProcess(config).start()
    first.wait_for_log(lambda r: "running" in r["msg"])
    assert first.proc is not None
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "run", str(config)], cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    assert second.returncode == 1
    assert f"another iotgw (pid {first.proc.pid}) is running" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.proc.poll() is None, "the first gateway is untouched"
    first.kill()  # kill -9: the kernel releases the lock
    third = GatewayProcess(config).start()
    third.wait_for_log(lambda r: "running" in r["msg"])
    assert third.stop() == 0
