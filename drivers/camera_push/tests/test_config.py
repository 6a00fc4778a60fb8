"""camera_push config: the token is a secret (never echoed, from a file, one per device),
the http: section is required, generic-json needs a mapping, pictures go to an absolute
folder. (The sample is loaded by tests/test_config.py with every driver's.)"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from drivers.camera_push import sim
from drivers.camera_push.config import CameraPushConfig
from drivers.camera_push.tests.harness import GatewayThread, config_text, wait_until
from gateway.config.loader import load_config
from gateway.errors import ConfigError

HEADER = "gateway: {id: gw-t, site: s, data_dir: data}\n"
HTTP = "http: {listen: '127.0.0.1:8088', max_body: 4MiB}\n"
SECRET = "Hunter2-token"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return caught.value.problems


def test_http_section_is_required(tmp_path: Path) -> None:
    found = problems(tmp_path, HEADER + "devices:\n  - {id: c, driver: camera_push, "
                     "profile: vzenith-plate, token: t}\n")
    assert any(":3: devices[0]: the camera_push driver needs the http: section" in p
               for p in found), found


def test_a_bad_token_is_refused_without_being_shown(tmp_path: Path) -> None:
    found = problems(tmp_path, HEADER + HTTP + "devices:\n  - {id: c, driver: camera_push, "
                     f"profile: vzenith-plate, token: '{SECRET}/x'}}\n")
    assert any("devices[0].token" in p and "only letters" in p for p in found), found
    assert not any(SECRET in p for p in found)


def test_two_devices_may_not_share_a_token(tmp_path: Path) -> None:
    device = "{id: %s, driver: camera_push, profile: vzenith-plate, token: " + SECRET + "}"
    found = problems(tmp_path, HEADER + HTTP + "devices:\n"
                     f"  - {device % 'a'}\n  - {device % 'b'}\n")
    assert any(":5: devices[1].token: same token as devices[0]" in p for p in found), found
    assert not any(SECRET in p for p in found)


@pytest.mark.parametrize(("device", "message"), [
    ("{id: c, driver: camera_push, profile: generic-json, token: t}", "needs a mapping"),
    ("{id: c, driver: camera_push, profile: vzenith-plate}", "set token"),
    ("{id: c, driver: camera_push, profile: hikvision-isapi, token: t, allow_list: /x}",
     "allow_list is for profile vzenith-plate"),
    ("{id: c, driver: camera_push, profile: hikvision-isapi, token: t, sources: [10.0.0.300]}",
     "sources"),
    ("{id: c, driver: camera_push, profile: generic-json, token: t, "
     "mapping: {measurement: m, fields: {v: 'v.w'}}}", "not a path"),
])
def test_device_errors_name_the_line(tmp_path: Path, device: str, message: str) -> None:
    found = problems(tmp_path, HEADER + HTTP + "devices:\n  - " + device + "\n")
    assert any(":4: devices[0]" in p and message in p for p in found), found


def test_a_hikvision_device_hiding_employee_must_hide_its_new_names(tmp_path: Path) -> None:
    """The employee number is person or holder now: an old config listing employee would
    let it out in clear, so it is refused at check."""
    key = tmp_path / "privacy.key"
    key.write_text("k" * 32)
    found = problems(tmp_path, HEADER + HTTP + f"privacy: {{key_file: {key}}}\ndevices:\n"
                     "  - {id: c, driver: camera_push, profile: hikvision-isapi, token: t, "
                     "pseudonymize: [card, employee]}\n")
    assert any("devices[0].pseudonymize" in p and "[card, person, holder]" in p
               for p in found), found


def test_token_file_and_networks(tmp_path: Path) -> None:
    token = tmp_path / "cam.token"
    token.write_text(SECRET + "\n")
    path = tmp_path / "gw.yaml"
    path.write_text(HEADER + HTTP + "devices:\n  - {id: c, driver: camera_push, profile: "
                    f"vzenith-plate, token_file: {token}, sources: [10.0.5.0/24, 10.0.6.7]}}\n")
    (device,) = load_config(path, environ={}).devices
    assert isinstance(device, CameraPushConfig)
    assert device.token_value() == SECRET and SECRET not in repr(device)
    assert [str(n) for n in device.sources] == ["10.0.5.0/24", "10.0.6.7/32"]


def test_images_folder_must_be_absolute(tmp_path: Path) -> None:
    found = problems(tmp_path, HEADER + "http: {listen: '127.0.0.1:1', images: {dir: pics}}\n")
    assert any("http.images.dir: " in p and "absolute" in p for p in found), found


def test_pictures_are_kept_bounded_and_private(tmp_path: Path) -> None:
    pictures = tmp_path / "pictures"
    path, port = config_text(tmp_path, f"""\
http: {{listen: '127.0.0.1:PORT', images: {{dir: {pictures}, max_bytes: 1MiB}}}}
devices:
  - {{id: anpr, driver: camera_push, profile: hikvision-isapi, token: tk}}
""")
    with GatewayThread(path, port) as gw:
        terminal = sim.HikvisionTerminal(port, "anpr", "tk")
        for n in range(8):  # 8 posts x 200 kB of pictures: past the 1 MiB cap
            assert gw.run(terminal.anpr(f"浙A0000{n}", uuid=f"p-{n}",
                                        picture_bytes=100_000)).status == 200
        wait_until(lambda: len(gw.lines(b"vehicle_event")) == 8, "8 reads stored")
    files = sorted((pictures / "anpr").iterdir())
    total = sum(f.stat().st_size for f in files)
    assert 0 < total <= 1024**2 and len(files) < 16, "oldest pictures not removed"
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE((pictures / "anpr").stat().st_mode) == 0o700
    assert any(f.name.endswith("detectionPicture.jpg") for f in files)
    # the newest post's pictures are the ones kept
    assert len([f for f in files if "licensePlatePicture" in f.name]) >= 4
