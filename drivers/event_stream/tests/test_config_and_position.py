"""Config checks of the HTTP device drivers (FILE:LINE: path: message) and the backfill
position's de-duplication keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivers.event_stream.events import StreamEvent
from drivers.event_stream.position import Position
from gateway.config.loader import load_config
from gateway.errors import ConfigError

HEADER = "gateway: {id: gw-t, site: s, data_dir: data}\ndevices:\n"
NVR = ("  - {{id: {id}, driver: event_stream, profile: dahua, host: 10.0.5.20, "
       "username: u, password: {pw}, channels: [{ch}]}}\n")


def problems(tmp_path: Path, devices: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + devices)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return [p.replace(f"{path}:", "gw.yaml:") for p in caught.value.problems]


def test_devices_sharing_a_host_must_share_its_stream_settings(tmp_path: Path) -> None:
    found = problems(tmp_path, NVR.format(id="ch1", pw="Secret-One", ch=1)
                     + NVR.format(id="ch2", pw="Secret-Two", ch=2))
    assert len(found) == 1
    assert found[0].startswith("gw.yaml:4: devices[1]: shares host 10.0.5.20:80 with "
                               "devices[0] (ch1), whose stream settings differ: password")
    assert "Secret" not in found[0]  # the key is named, never its value
    # the same settings are fine, and another port is another host
    path = tmp_path / "ok.yaml"
    path.write_text(HEADER + NVR.format(id="ch1", pw="p", ch=1) + NVR.format(id="ch2", pw="p",
                                                                              ch=2))
    assert len(load_config(path, environ={}).devices) == 2


@pytest.mark.parametrize(("device", "message"), [
    ("{id: d, driver: event_stream, profile: hikvision, host: h}",
     "auth: digest needs username and password"),
    ("{id: d, driver: event_stream, profile: dahua, host: h, auth: none, backfill: true}",
     "backfill: only the hikvision profile"),
    ("{id: d, driver: event_stream, profile: dahua, host: h, auth: none, heartbeat: 5, "
     "silence: 5s}", "silence: must be longer than heartbeat"),
    ("{id: d, driver: event_stream, profile: dahua, host: h, auth: none, channels: [0]}",
     "devices[0].channels[0]: "),
    ("{id: d, driver: event_stream, profile: dahua, host: 'h/x', auth: none}",
     "devices[0].host: "),
    ("{id: d, driver: camera_health, host: h, rtsp_path: 'no-slash'}",
     "must start with /"),
    ("{id: d, driver: event_stream, profile: axis, host: h, auth: none}",
     "devices[0].profile: "),
])
def test_bad_settings_are_refused_with_their_line(tmp_path: Path, device: str,
                                                  message: str) -> None:
    found = problems(tmp_path, f"  - {device}\n")
    assert any(p.startswith("gw.yaml:3: ") and message in p for p in found), found


def access(serial: int, second: int) -> StreamEvent:
    return StreamEvent("AccessControllerEvent", "pulse", time_ns=second * 10**9,
                       serial=serial, access=True)


def test_an_event_id_is_its_serial_and_second(tmp_path: Path) -> None:
    position = Position(tmp_path / "p.json")
    assert position.is_new(access(5, 1000))
    assert not position.is_new(access(5, 1000))  # the same event again
    position.advance([access(5, 1000)])
    # A terminal reset counts serials from 1 again: serial 5 at another time is new.
    assert position.is_new(access(5, 2000))
    position.forget(access(5, 2000))  # refused by the pipeline: may come again
    assert position.is_new(access(5, 2000))
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved == {"time_ns": 1000 * 10**9, "utc_offset": None, "seen": [[5, 1000]]}
    (tmp_path / "event_stream").mkdir()
    (tmp_path / "p.json").rename(tmp_path / "event_stream" / "lobby.json")
    reloaded = Position.load(tmp_path, "lobby")
    assert reloaded.load_error is None and reloaded.time_ns == 1000 * 10**9
    assert not reloaded.is_new(access(5, 1000)) and reloaded.is_new(access(6, 1000))


@pytest.mark.parametrize(("profile", "listed", "refused"), [
    ("hikvision", ["card", "employee"], True),  # a config from before the contract
    ("hikvision", ["card", "employee", "person", "holder"], False),
    ("hikvision", ["card", "person", "holder"], False),
    ("dahua", ["card", "employee"], False),  # Dahua still writes employee
])
def test_a_hikvision_employee_to_pseudonymise_is_named_anew(
        tmp_path: Path, profile: str, listed: list[str], refused: bool) -> None:
    """Hikvision access events follow the contract (docs/schema.md): the employee number
    is ``person`` on a face and ``holder`` on the others, as camera_push writes it. A
    config that still lists ``employee`` would send both in clear: refused at check."""
    key = tmp_path / "key"
    key.write_text("k" * 32)
    key.chmod(0o600)
    device = (f"  - {{id: t, driver: event_stream, profile: {profile}, host: 10.0.6.31, "
              f"username: u, password: p, pseudonymize: {json.dumps(listed)}}}\n")
    path = tmp_path / "gw.yaml"
    path.write_text(f"gateway: {{id: gw-t, site: s, data_dir: data}}\n"
                    f"privacy: {{key_file: {key}}}\ndevices:\n" + device)
    if not refused:
        assert len(load_config(path, environ={}).devices) == 1
        return
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}:4: devices[0].pseudonymize: the field employee is "
                              "no longer written"), problem
    assert "[card, person, holder]" in problem
