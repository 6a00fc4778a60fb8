"""A retry after a gateway restart is not a second event. Found by the outside probe:
a plate post was committed, the gateway was killed (kill -9) before the camera got its
answer, the camera retried after the restart and the event was stored twice (the ids
lived in memory only; a post without a device time got a new arrival time, and
VictoriaMetrics keeps every sample even at one timestamp). Real gateway, real buffer
and file sink, restarted on the same data directory."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

from drivers.camera_push import sim
from drivers.camera_push.tests.harness import KEY, GatewayThread, config_text, wait_until
from gateway.pseudonym import Pseudonymizer

CONFIG = """\
http: {listen: "127.0.0.1:PORT", dedup_size: 16}
devices:
  - {id: gate-cam-1, driver: camera_push, profile: vzenith-plate, token: tok,
     pseudonymize: [plate]}
  - {id: lobby, driver: camera_push, profile: hikvision-isapi, token: t2}
"""


def without_device_time(body: bytes) -> bytes:
    doc = json.loads(body)
    del doc["AlarmInfoPlate"]["result"]["PlateResult"]["timeStamp"]
    return json.dumps(doc, ensure_ascii=False).encode()


def test_a_retry_after_a_restart_is_stored_once(tmp_path: Path) -> None:
    path, port = config_text(tmp_path, CONFIG)
    camera = sim.PlateCamera(port, "gate-cam-1", "tok")
    terminal = sim.HikvisionTerminal(port, "lobby", "t2")
    plate = without_device_time(camera.event("粤B55555"))
    hashed = Pseudonymizer(KEY.encode())("粤B55555").encode()
    with GatewayThread(path, port) as gw:
        first = gw.run(camera.push(plate))
        assert first.status == 200
        assert gw.run(terminal.access_json(901)).status == 200
        wait_until(lambda: len(gw.lines(b"access_event")) == 2, "both events committed")
    time.sleep(1.1)  # a new arrival second
    with GatewayThread(path, port) as gw:
        again = gw.run(camera.push(plate))
        assert again.status == 200 and again.json() == first.json()
        assert gw.run(terminal.access_json(901)).status == 200
        wait_until(lambda: gw.counters("gate-cam-1").get("duplicate", 0) == 1
                   and gw.counters("lobby").get("duplicate", 0) == 1, "both retries seen")
        # a new event is still taken after the restart
        assert gw.run(terminal.access_json(902)).status == 200
        wait_until(lambda: b"serial=902i" in b"".join(gw.lines(b"access_event")),
                   "the new event delivered")
        # Only the new event went into the buffer in this run. (The file sink may see a
        # line twice across a restart, at-least-once delivery; the buffer must not.)
        assert gw.committed() == 1
        assert len({x for x in gw.lines(b"access_event") if hashed in x}) == 1
    journal = tmp_path / "data" / "camera_push" / "gate-cam-1.ids"
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
    assert "粤B55555".encode() not in journal.read_bytes() and hashed not in journal.read_bytes()


def test_the_journal_stays_bounded(tmp_path: Path) -> None:
    path, port = config_text(tmp_path, CONFIG)
    terminal = sim.HikvisionTerminal(port, "lobby", "t2")
    with GatewayThread(path, port) as gw:
        for serial in range(1, 41):
            assert gw.run(terminal.access_json(serial)).status == 200
    journal = tmp_path / "data" / "camera_push" / "lobby.ids"
    lines = journal.read_bytes().splitlines()
    assert 16 <= len(lines) < 32  # compacted at 2 x dedup_size
    with GatewayThread(path, port) as gw:
        assert gw.run(terminal.access_json(40)).status == 200  # remembered: duplicate
        assert gw.run(terminal.access_json(1)).status == 200  # forgotten long ago: stored
        wait_until(lambda: gw.counters("lobby").get("duplicate", 0) == 1, "one duplicate")
        wait_until(lambda: gw.committed() == 1, "only the forgotten one stored again")
