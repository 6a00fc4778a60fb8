"""Simulated cameras and terminals -> a real ``iotgw run`` process -> a file sink and
VictoriaMetrics: the issue's example config, every format, retries stored once, the
plate pseudonymised before it reaches either store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.camera_push import sim
from drivers.camera_push.tests.harness import ISSUE_EXAMPLE, KEY
from gateway.pseudonym import Pseudonymizer
from tests.e2e import wait_drained
from tests.gwproc import GatewayProcess
from tests.support.files import file_lines
from tests.support.servers import VictoriaMetrics, free_port


def test_push_devices_into_file_and_victoriametrics(tmp_path: Path,
                                                    victoria: VictoriaMetrics) -> None:
    key = tmp_path / "privacy.key"
    key.write_text(KEY)
    port = free_port()
    config = tmp_path / "gw.yaml"
    config.write_text(
        "gateway: {id: gw-e2e-push, site: e2e-push-site, data_dir: data}\n"
        "buffer: {flush_interval: 100ms}\n"
        f"privacy: {{key_file: {key}}}\n"
        "sinks:\n  - {type: file, name: local}\n"
        f"  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
        + ISSUE_EXAMPLE.replace("8088", str(port)))
    gw = GatewayProcess(config).start()
    try:
        gw.wait_for_log(lambda r: r["msg"].startswith("push receiver on"))
        camera = sim.PlateCamera(port, "gate-cam-1", "s3cret-token")
        terminal = sim.HikvisionTerminal(port, "lobby-terminal", "t2")

        async def scenario() -> list[int]:
            statuses = []
            for n in range(5):
                body = camera.event(f"粤B1000{n}", sec=1772583330 + n)
                statuses.append((await camera.push(body, lose_answers=n % 2)).status)
            statuses.append((await terminal.access_xml(1, when="2026-03-04T08:15:30+08:00"))
                            .status)
            statuses.append((await terminal.access_json(2, when="2026-03-04T08:15:31+08:00"))
                            .status)
            statuses.append((await terminal.access_multipart(
                3, when="2026-03-04T08:15:32+08:00")).status)
            statuses.append((await terminal.anpr("浙A12345", uuid="e2e-1")).status)
            statuses.append((await terminal.push(b"<nope", "application/xml")).status)
            return statuses

        assert asyncio.run(scenario()) == [200] * 9 + [400]
        wait_drained(tmp_path / "data" / "buffer.db", ["local", "vm"])
    finally:
        assert gw.stop() == 0
    assert not [m for m in gw.messages() if "s3cret-token" in m or "/t2" in m]

    lines = [x.decode() for x in file_lines(tmp_path / "data")]
    plates = [x for x in lines if x.startswith("access_event") and "gate-cam-1" in x]
    assert len(plates) == 5, "a retried post was stored twice (or lost)"
    hide = Pseudonymizer(KEY.encode())
    assert sorted(x.split('plate="')[1][:16] for x in plates) == sorted(
        hide(f"粤B1000{n}") for n in range(5))
    assert not any("粤B" in x for x in lines)
    assert len([x for x in lines if x.startswith("access_event") and "lobby" in x]) == 3

    series = victoria.samples('{__name__=~"(vehicle|access)_event_.*", site="e2e-push-site"}')
    by_name: dict[str, list[tuple[int, float]]] = {}
    for (name, *_labels), values in series.items():
        by_name.setdefault(name, []).extend(values)
    assert sorted(v for _, v in by_name["access_event_plate_id"]) == [1, 2, 3, 4, 5]
    assert len(by_name["access_event_plate_key"]) == 5  # what the governance queries count
    assert sorted(t for t, _ in by_name["access_event_plate_id"]) == [
        (1772583330 + n) * 1000 for n in range(5)]
    assert sorted(v for _, v in by_name["access_event_serial"]) == [1, 2, 3]
    assert [v for _, v in by_name["vehicle_event_image_count"]] == [2]
    labels = {label for name, *rest in series for label in rest}
    assert {"device=gate-cam-1", "device=lobby-terminal", "reader=1", "kind=plate",
            "kind=face", "result=granted"} <= labels
