"""A post is answered "stored" only if the buffer kept it. Found by the outside probe:
with the buffer's file system full (below ``min_free``) the buffer dropped each new
event in its own commit (``drop_oldest`` on a nearly empty buffer evicts the new lines)
and the receiver still answered 200, so the terminals never retried: every answered
event of the outage was lost. Real gateway and SQLite buffer; ``min_free`` set beyond
the disk's size stands in for a full disk."""

from __future__ import annotations

from pathlib import Path

from drivers.camera_push import sim
from drivers.camera_push.tests.harness import GatewayThread, wait_until
from tests.support.servers import free_port

CONFIG = """\
gateway: {{id: gw-full, site: s, data_dir: data}}
buffer: {{flush_interval: 50ms, min_free: {min_free}}}
sinks: [{{type: file}}]
http: {{listen: "127.0.0.1:{port}"}}
devices:
  - {{id: lobby, driver: camera_push, profile: hikvision-isapi, token: t2}}
"""


def gateway(tmp_path: Path, min_free: str) -> GatewayThread:
    port = free_port()
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG.format(min_free=min_free, port=port))
    return GatewayThread(path, port)


def test_a_post_the_full_buffer_drops_gets_503_and_is_taken_on_retry(tmp_path: Path) -> None:
    with gateway(tmp_path, "16TiB") as gw:
        terminal = sim.HikvisionTerminal(gw.port, "lobby", "t2")
        reply = gw.run(terminal.access_json(11))
        assert reply.status == 503, reply
        assert gw.counters("lobby").get("buffer_full") == 1
        assert gw.committed() == 0
    (tmp_path / "gw.yaml").unlink()
    with gateway(tmp_path, "0") as gw:  # space again: the terminal's retry is stored
        terminal = sim.HikvisionTerminal(gw.port, "lobby", "t2")
        assert gw.run(terminal.access_json(11)).status == 200
        wait_until(lambda: gw.committed() == 1, "the retried event committed")
        assert gw.counters("lobby").get("duplicate") is None
