"""The container image, built and run on this machine without a Docker engine.

buildah (chroot isolation, vfs storage) builds deploy/Dockerfile on a Debian bookworm base
that mmdebstrap makes from Debian's packages (no registry is reachable to pull the public
python image), from the wheels deploy/build-image.sh builds beforehand; then the gateway
runs inside the image, with the image's own entrypoint and command, into a VictoriaMetrics
on the loopback (chroot isolation shares the host's network namespace).

Every image and container lives in a private storage directory (--root/--runroot) that is
deleted afterwards: nothing reaches the machine's global container storage and parallel
runs never share state. Like deploy/bootstrap.sh, it needs Debian's package archive
(mmdebstrap) and PyPI (the wheels); 2.5 to 4 minutes on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import grid_index
from tests.gwproc import ROOT
from tests.support.servers import VictoriaMetrics, free_port, http_request
from tests.support.wait import eventually_sync

pytestmark = pytest.mark.slow

IOTGW_UID = IOTGW_GID = 10001  # the Dockerfile's fixed ids
BASE_TAG = "localhost/iotgw-test-base:bookworm"
IMAGE_TAG = "localhost/iotgw-test:latest"
# Debian bookworm's python3 is 3.11, the version build-image.sh picks wheels for.
BASE_PACKAGES = "python3,python3-venv,ca-certificates,passwd"
HANG_GUARD = 900.0  # seconds for one build step on a busy shared machine; never a limit


def require_tools() -> None:
    """Fail, not skip: deploy/bootstrap.sh installs both, so a missing one is a defect."""
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: deploy/bootstrap.sh installs "
                    "them (Debian packages buildah, mmdebstrap)")


def run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = HANG_GUARD,
        cwd: Path | None = None) -> str:
    """stdout of a command that must succeed; its whole output in the failure message."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                            env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}")
    return result.stdout


class Buildah:
    """buildah on a private vfs store (vfs works on any filesystem, no overlay needed)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def argv(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.base / "root"), "--runroot",
                str(self.base / "run"), "--storage-driver", "vfs", *args]

    def __call__(self, *args: str) -> str:
        return run(self.argv(*args))

    def image_config(self, image: str) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(
            self("inspect", "--type", "image", image))["Docker"]["config"]
        return config

    def destroy(self) -> None:
        """Remove every container and image, then the store itself (GBs with vfs)."""
        subprocess.run(self.argv("rm", "--all"), capture_output=True, timeout=HANG_GUARD)
        subprocess.run(self.argv("rmi", "--all", "--force"), capture_output=True,
                       timeout=HANG_GUARD)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def buildah(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Buildah]:
    require_tools()
    store = Buildah(tmp_path_factory.mktemp("buildah"))
    try:
        yield store
    finally:
        store.destroy()


@pytest.fixture(scope="session")
def debian_base(buildah: Buildah, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bookworm base image from Debian's packages, made once per test session.

    minbase is only the essential packages; the Dockerfile also needs python3-venv (the
    venv) and passwd (useradd), both in the public python:3.11-slim-bookworm image too.
    """
    context = tmp_path_factory.mktemp("base")
    try:
        run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={BASE_PACKAGES}",
             "bookworm", str(context / "rootfs.tar")])
        (context / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n')
        buildah("bud", "--isolation", "chroot", "-t", BASE_TAG, str(context))
    finally:
        shutil.rmtree(context)  # a 225 MB tarball
    return BASE_TAG


@pytest.fixture(scope="session")
def gateway_image(buildah: Buildah, debian_base: str,
                  tmp_path_factory: pytest.TempPathFactory) -> str:
    """deploy/Dockerfile built as the docs say: wheels first, then no index in the build.

    The build context is a copy of what the repository's context lets through
    (.dockerignore: deploy/ files and wheels/), so wheels of parallel runs never meet.
    """
    context = tmp_path_factory.mktemp("context")
    shutil.copytree(ROOT / "deploy", context / "deploy")
    shutil.copy2(ROOT / ".dockerignore", context / ".dockerignore")
    env = {**os.environ, "WHEELS": str(context / "wheels")}
    env.pop("PLATFORMS", None)  # this machine's architecture
    try:
        run(["bash", str(ROOT / "deploy/build-image.sh"), "wheels"], env=env)
        buildah("bud", "--isolation", "chroot", "--format", "docker",
                "--build-arg", f"BASE_IMAGE={debian_base}",
                "-f", str(context / "deploy/Dockerfile"), "-t", IMAGE_TAG, str(context))
    finally:
        shutil.rmtree(context)
    return IMAGE_TAG


def test_image_runs_as_iotgw_with_health_check_volume_and_default_command(
        buildah: Buildah, gateway_image: str) -> None:
    config = buildah.image_config(gateway_image)
    assert config["User"] == "iotgw:iotgw"
    assert config["Entrypoint"] == ["iotgw"]
    assert config["Cmd"] == ["run", "/etc/iotgw/gateway.yaml", "--log-format", "json"]
    assert set(config["Volumes"]) == {"/var/lib/iotgw"}
    assert config["Healthcheck"]["Test"][0] == "CMD" and "/healthz" in config["Healthcheck"][
        "Test"][-1]
    assert config["Labels"]["org.opencontainers.image.title"] == "iotgw"
    container = buildah("from", gateway_image).strip()
    try:  # one run: each is a few seconds on the vfs store
        out = buildah("run", "--isolation", "chroot", container, "--", "sh", "-c",
                      "id; iotgw check /etc/iotgw/gateway.yaml;"
                      " python -m pip --version 2>/dev/null || echo no pip").splitlines()
    finally:
        buildah("rm", container)
    assert out[0].startswith(f"uid={IOTGW_UID}(iotgw) gid={IOTGW_GID}(iotgw)"), out
    assert out[1].startswith("/etc/iotgw/gateway.yaml: OK"), out
    assert out[-1] == "no pip", "pip is left out of the final image"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (the container's processes are the host's)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def ids_of(pid: int) -> tuple[list[int], list[int], list[str]]:
    """(uids, gids, argv) of a live process: real, effective, saved and filesystem ids."""
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    argv = Path(f"/proc/{pid}/cmdline").read_text().rstrip("\0").split("\0")
    return ([int(x) for x in status["Uid"].split()], [int(x) for x in status["Gid"].split()],
            argv)


def test_gateway_in_the_image_writes_to_victoriametrics_as_non_root(
        buildah: Buildah, gateway_image: str, victoria: VictoriaMetrics, tmp_path: Path) -> None:
    health_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "gateway: {id: gw-container, site: container-site, data_dir: /var/lib/iotgw}\n"
        "buffer: {flush_interval: 100ms}\n"
        f"health: {{listen: '127.0.0.1:{health_port}'}}\n"
        f"sinks:\n  - {{type: influxdb, name: vm, url: '{victoria.url}', bucket: b, token: t}}\n"
        "devices:\n  - {id: container-1, driver: synthetic, measurement: container_meter,"
        " interval: 200ms, fields: 2}\n")
    config.chmod(0o644)
    data = tmp_path / "data"  # the data volume, owned by the image's user as on a real host
    data.mkdir()
    os.chown(data, IOTGW_UID, IOTGW_GID)
    image = buildah.image_config(gateway_image)
    log_path = tmp_path / "gateway.log"
    container = buildah("from", gateway_image).strip()
    # buildah 1.28 mounts the image's VOLUME and a bind mount onto the same path in a
    # random order, so the bind mount is sometimes shadowed: this container drops the
    # VOLUME (Docker lets the -v win), the image keeps it.
    buildah("config", "--volume", "/var/lib/iotgw-", container)
    argv = buildah.argv("run", "--isolation", "chroot", "-v", f"{data}:/var/lib/iotgw",
                        "-v", f"{config}:/etc/iotgw/gateway.yaml:ro", container, "--",
                        *image["Entrypoint"], *image["Cmd"])
    gateway_pid = None
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        def seq_samples() -> list[dict[str, Any]]:
            rows = victoria.export('{__name__="container_meter_seq"}')
            return rows if rows and len(rows[0]["values"]) >= 5 else []

        eventually_sync(lambda: seq_samples() or proc.poll() is not None, within=180.0,
                        every=0.5, what="readings from the gateway in the container")
        assert proc.poll() is None, log_path.read_text()[-4000:]
        rows = seq_samples()
        assert [row["metric"] for row in rows] == [{
            "__name__": "container_meter_seq", "device": "container-1",
            "gateway": "gw-container", "site": "container-site"}]
        grid = [grid_index(ts, 200) for ts in rows[0]["timestamps"]]
        assert rows[0]["values"] == [float(k) for k in grid], "the real synthetic driver"

        status, body = http_request("GET", f"http://127.0.0.1:{health_port}/healthz")
        assert status == 200, body

        processes = {pid: ids_of(pid) for pid in descendants(proc.pid)}
        inside = {pid: ids for pid, ids in processes.items()
                  if ids[2][0] != "buildah-chroot-runtime"}  # buildah's own supervisor
        gateways = [pid for pid, (_, _, cmd) in inside.items()
                    if cmd[0].endswith(("python3", "python")) and "run" in cmd]
        assert len(gateways) == 1, processes
        gateway_pid = gateways[0]
        for uids, gids, cmd in inside.values():
            assert uids == [IOTGW_UID] * 4 and gids == [IOTGW_GID] * 4, (cmd, uids, gids)

        os.kill(gateway_pid, signal.SIGTERM)  # what `docker stop` sends (STOPSIGNAL)
        assert proc.wait(timeout=120) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            if gateway_pid is not None:
                os.kill(gateway_pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=60)
        buildah("rm", container)

    records = [json.loads(line) for line in log_path.read_text().splitlines()
               if line.startswith("{")]
    assert any(r["msg"].startswith("stopped:") for r in records), records[-5:]
    buffer = data / "buffer.db"
    assert buffer.is_file(), "the buffer lives on the data volume"
    assert (buffer.stat().st_uid, buffer.stat().st_gid) == (IOTGW_UID, IOTGW_GID)
