"""A reload that changes what only a start sets up starts the gateway again in place
(gateway/restart.py): a real ``iotgw run`` process, the same PID before and after."""

from __future__ import annotations

import json
import signal
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.openssl_gate import ENV
from tests.gwproc import GatewayProcess
from tests.support.mqtt import connect
from tests.support.servers import Mosquitto, free_port


def start(config: Path) -> GatewayProcess:
    gw = GatewayProcess(config)
    gw.env.pop(ENV, None)
    return gw.start()


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
        return int(answer.status)


def test_a_reload_moving_the_health_endpoint_restarts_in_place(tmp_path: Path) -> None:
    first, second = free_port(), free_port()
    config = tmp_path / "gw.yaml"
    body = textwrap.dedent("""\
        gateway: {id: gw-move, site: s, data_dir: data}
        health: {listen: '127.0.0.1:PORT', report_interval: 0}
        devices: [{id: d1, driver: synthetic, interval: 100ms}]
        """)
    config.write_text(body.replace("PORT", str(first)))
    gw = start(config)
    try:
        gw.wait_for_log(lambda r: r["msg"].startswith(f"health endpoint on http://127.0.0.1:{first}"))
        assert gw.proc is not None
        pid = gw.proc.pid
        assert healthz(first) == 200
        config.write_text(body.replace("PORT", str(second)))
        gw.signal(signal.SIGHUP)
        gw.wait_for_log(lambda r: r["msg"].startswith("reload: health changed"))
        gw.wait_for_log(lambda r: r["msg"].startswith(
            f"health endpoint on http://127.0.0.1:{second}"))
        assert gw.proc.poll() is None and gw.proc.pid == pid
        assert healthz(second) == 200
        with pytest.raises(urllib.error.URLError):
            healthz(first)
    finally:
        assert gw.stop() == 0
    problems = [r for r in gw.records if r["level"] in ("warning", "error")]
    assert not problems, problems


def test_cmd_reload_that_restarts_the_gateway_is_answered_once(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The answer says so (``restarting``) and names the new config's hash; the new
    image neither runs the command again nor answers it a second time."""
    base = "compound/restart/gw"
    config = tmp_path / "gw.yaml"
    body = textwrap.dedent(f"""\
        gateway: {{id: gw-cmd, site: s, data_dir: data}}
        mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, username: gw,
                password: {mosquitto.users['gw']}, base_topic: {base},
                client_id: restart-cmd, stats_interval: STATS}}
        devices: [{{id: d1, driver: synthetic, interval: 100ms}}]
        """)
    config.write_text(body.replace("STATS", "30s"))
    gw = start(config)
    watcher = connect(mosquitto)
    try:
        gw.wait_for_log(lambda r: "connected" in r["msg"] and "restart-cmd" in r["msg"])
        assert gw.proc is not None
        pid = gw.proc.pid
        watcher.subscribe(f"{base}/cmd/reload/result", 1)
        config.write_text(body.replace("STATS", "20s"))
        watcher.publish(f"{base}/cmd/reload", json.dumps({"id": "r-1"}), qos=1) \
            .wait_for_publish(10)
        gw.wait_for_log(lambda r: r["msg"].startswith("reload: mqtt changed"))
        running = [r for r in gw.records if "running" in r["msg"]]
        gw.wait_for_log(lambda r: "running" in r["msg"] and r not in running)
        gw.wait_for_log(lambda r: "connected" in r["msg"] and "restart-cmd" in r["msg"]
                        and r["ts"] > running[-1]["ts"])
        time.sleep(2.0)  # a redelivered command would be answered again by now
        answers = [json.loads(p) for p in watcher.on(f"{base}/cmd/reload/result")]
        assert gw.proc.poll() is None and gw.proc.pid == pid
    finally:
        watcher.close()
        assert gw.stop() == 0
    assert len(answers) == 1, answers
    (answer,) = answers
    assert answer["ok"] is True and answer["id"] == "r-1", answer
    assert answer["result"]["restarting"] == ["mqtt"]
    reloads = [r for r in gw.records if r["msg"].startswith("reload: mqtt changed")]
    assert len(reloads) == 1



@pytest.mark.parametrize("delay", [0.003, 0.006, 0.012])
def test_a_stop_during_the_stop_for_a_restart_is_a_stop(tmp_path: Path, delay: float) -> None:
    """SIGTERM a few ms after a reload that restarts in place (here: the health endpoint
    added, which also needs OpenSSL): the gateway ends, rather than starting again and
    running on (an outside probe: 8 of 8 swallowed the SIGTERM)."""
    config = tmp_path / "gw.yaml"
    head = ("gateway: {id: gw-term, site: s, data_dir: data, shutdown_timeout: 5s}\n"
            "devices: [{id: d1, driver: synthetic, interval: 100ms}]\n")
    config.write_text(head)
    gw = start(config)
    try:
        gw.wait_for_log(lambda r: "running" in r["msg"])
        assert gw.proc is not None
        config.write_text(head + f"health: {{listen: '127.0.0.1:{free_port()}'}}\n")
        gw.signal(signal.SIGHUP)
        time.sleep(delay)
        gw.signal(signal.SIGTERM)
        code = gw.proc.wait(timeout=30)
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.kill()
    assert code in (0, -signal.SIGTERM), code
    started = [r for r in gw.records if "running" in r["msg"]]
    assert len(started) == 1, "started again after the SIGTERM"
