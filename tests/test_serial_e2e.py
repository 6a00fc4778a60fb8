"""Serial drivers through the real ``iotgw run`` into VictoriaMetrics; pseudonymisation.

The meter and reader simulators run in this process on pty pairs; the gateway process
opens the slave side like a real RS-485 adapter.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.cjt188.sim import Cjt188Bus, Meter188, water_body
from drivers.dlt645.points import POINTS_2007
from drivers.dlt645.sim import Dlt645Bus, Meter645
from drivers.serialbus.sim import PtySerial, StreamDevice, bcd_le
from tests.e2e import wait_drained
from tests.gwproc import GatewayProcess
from tests.support.servers import VictoriaMetrics
from tests.support.wait import eventually_sync


def _config(path: Path, victoria: VictoriaMetrics, body: str) -> None:
    path.write_text(
        "gateway: {id: gw-serial, site: serial-site, data_dir: data}\n"
        "buffer: {flush_interval: 100ms}\n"
        f"sinks:\n  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
        + body)


def _wait_rows(victoria: VictoriaMetrics, match: str,
               predicate: Callable[[list[dict[str, Any]]], bool],
               within: float = 30.0) -> list[dict[str, Any]]:
    return eventually_sync(lambda: victoria.export(match), until=predicate, within=within,
                           every=0.3, what=match)


def test_meters_into_victoriametrics(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    p = POINTS_2007
    meters = Dlt645Bus([Meter645("000012345678", {
        p["energy_total"].di: bcd_le("12345678"), p["voltage_a"].di: bcd_le("2201"),
        p["current_a"].di: bcd_le("001500", negative=True)})])
    water = Cjt188Bus([Meter188("00201510270588", body=water_body(
        "00012345", 0x2C, "00010000", 0x2C, "20240301120000"))])
    with PtySerial(meters) as pty645, PtySerial(water) as pty188:
        config = tmp_path / "gw.yaml"
        _config(config, victoria, f"""\
buses:
  m645: {{type: serial, port: {pty645.path}, baudrate: 2400, parity: N, timeout: 300ms}}
  m188: {{type: serial, port: {pty188.path}, baudrate: 2400, parity: N, timeout: 300ms}}
devices:
  - {{id: e2e-elec-1, driver: dlt645, bus: m645, address: "12345678", interval: 200ms,
     points: [energy_total, voltage_a, current_a], tags: {{building: "5"}}}}
  - {{id: e2e-water-1, driver: cjt188, bus: m188, address: "00201510270588", interval: 200ms}}
""")
        gw = GatewayProcess(config).start()
        try:
            gw.wait_for_log(lambda r: "running" in r["msg"])
            rows = _wait_rows(victoria, '{__name__=~"energy_meter_.*|water_meter_.*", '
                              'device=~"e2e-elec-1|e2e-water-1"}',
                              lambda rows: len(rows) >= 5)
        finally:
            assert gw.stop() == 0
    values = {r["metric"]["__name__"]: r["values"][-1] for r in rows}
    assert values["energy_meter_energy_total"] == 123456.78
    assert values["energy_meter_voltage_a"] == 220.1
    assert values["energy_meter_current_a"] == -1.5
    assert values["water_meter_total"] == 123.45
    assert values["water_meter_settlement_total"] == 100.0
    labels = next(r["metric"] for r in rows if r["metric"]["__name__"] == "energy_meter_voltage_a")
    assert labels == {"__name__": "energy_meter_voltage_a", "site": "serial-site",
                      "gateway": "gw-serial", "device": "e2e-elec-1", "building": "5"}


class Reader(StreamDevice):
    def take_frame(self) -> bytes | None:
        self.buffer.clear()
        return None


def test_card_numbers_never_leave_the_process(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    card = "8804417723019"
    key = b"k" * 32
    (tmp_path / "pseudonym.key").write_bytes(key)
    token = hmac.new(key, card.encode(), hashlib.sha256).hexdigest()[:16]
    with PtySerial(Reader()) as pty:
        config = tmp_path / "gw.yaml"
        _config(config, victoria, f"""\
privacy: {{key_file: {tmp_path / 'pseudonym.key'}}}
devices:
  - id: e2e-gate-1
    driver: serial_line
    port: {pty.path}
    pattern: '^CARD:(?P<card>\\d+);DIR:(?P<direction>IN|OUT)$'
    tag_groups: [card, direction]
    pseudonymize: [card]
    measurement: e2e_access
""")
        gw = GatewayProcess(config).start()
        try:
            gw.wait_for_log(lambda r: "running" in r["msg"])

            def swiped() -> list[dict[str, Any]]:
                # a record that does not match, with the card inside, must not be logged
                pty.write(f"noise CARD:{card} garbage\r\nCARD:{card};DIR:IN\r\n".encode())
                time.sleep(0.5)
                return victoria.export('{__name__="e2e_access_event"}')

            rows = eventually_sync(swiped, within=30, every=0.0, what="the swipe stored")
            wait_drained(tmp_path / "data" / "buffer.db", ["vm"])
        finally:
            assert gw.stop() == 0
    assert rows and rows[0]["metric"]["card"] == token
    assert rows[0]["metric"]["direction"] == "IN"
    everything = victoria.export('{__name__=~".+"}')
    assert card not in repr(everything)
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert card.encode() not in path.read_bytes(), f"raw card number in {path}"
    assert card not in "".join(gw.raw)
    assert any("does not match" in m for m in gw.messages())
