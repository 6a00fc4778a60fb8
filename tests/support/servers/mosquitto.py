"""Mosquitto 2.0 for the tests: password auth, an ACL, plain and TLS listeners."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.support.servers.common import LOOPBACK, ServerError, ServerProcess, binary, port_open
from tests.support.servers.tls import TestCA

DEFAULT_MQTT_USERS: dict[str, str] = {"gw": "gw-secret", "ops": "ops-secret"}

# gw: the gateway's own account. ops: an operator/monitoring account that may read
# everything but write only under ops/. Pattern lines apply to every user.
DEFAULT_MQTT_ACL = """\
pattern write x/%u/#

user gw
topic readwrite compound/#

user ops
topic read compound/#
topic read x/#
topic readwrite ops/#
"""


class Mosquitto(ServerProcess):
    """Mosquitto 2.0 with password auth, an optional ACL and a TLS listener.

    ``port`` is plain MQTT, ``tls_port`` MQTT over TLS with a server cert for 127.0.0.1 and
    localhost signed by ``ca`` (clients verify with ``ca_file``). ``client_cert`` /
    ``client_key`` are signed by the same CA for mutual-TLS tests.
    """

    name = "mosquitto"
    host = LOOPBACK

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        tls: bool = True,
        ca: TestCA | None = None,
        require_certificate: bool = False,
        use_identity_as_username: bool = False,
        persistence: bool = False,
        max_queued_messages: int = 100_000,
        allow_anonymous: bool = False,
        port: int | None = None,
        tls_port: int | None = None,
        extra_config: str = "",
    ) -> None:
        ports = [port, tls_port] if tls else [port]
        super().__init__(base_dir, ports)
        self.users = dict(DEFAULT_MQTT_USERS if users is None else users)
        self.acl = acl
        self.tls = tls
        self.require_certificate = require_certificate
        self.use_identity_as_username = use_identity_as_username
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.allow_anonymous = allow_anonymous
        self.extra_config = extra_config
        self.config_path = self.dir / "mosquitto.conf"
        self.password_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        self.persistence_dir = self.dir / "persist"
        self.ca: TestCA | None = None
        self.server_cert: Path | None = None
        self.server_key: Path | None = None
        self.client_cert: Path | None = None
        self.client_key: Path | None = None
        if tls:
            self.ca = ca if ca is not None else TestCA(self.dir)
            self.server_cert, self.server_key = self.ca.issue("localhost", server=True)
            self.client_cert, self.client_key = self.ca.issue("gw")
        self._write_auth_files()

    @property
    def port(self) -> int:
        return self._ports[0]

    @property
    def tls_port(self) -> int:
        if not self.tls:
            raise ServerError("this Mosquitto has no TLS listener")
        return self._ports[1]

    @property
    def ca_file(self) -> Path:
        if self.ca is None:
            raise ServerError("this Mosquitto has no TLS listener")
        return self.ca.cert_file

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://{LOOPBACK}:{self.tls_port}"

    def _write_auth_files(self) -> None:
        passwd = binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        self.password_file.write_text("")
        for user, password in self.users.items():
            subprocess.run(
                [passwd, "-b", str(self.password_file), user, password],
                check=True, capture_output=True,
            )
        if self.acl is not None:
            self.acl_file.write_text(self.acl)

    def _prepare(self) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        lines = [
            # As root, mosquitto drops to user "mosquitto", which cannot read our temp dir.
            f"user {user}",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"password_file {self.password_file}",
            f"max_queued_messages {self.max_queued_messages}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",  # connects/disconnects; not per-message debug
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self.acl is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.persistence:
            self.persistence_dir.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        lines += ["", f"listener {self.port} {LOOPBACK}"]
        if self.tls:
            assert self.ca is not None
            lines += [
                "",
                f"listener {self.tls_port} {LOOPBACK}",
                f"cafile {self.ca.cert_file}",
                f"certfile {self.server_cert}",
                f"keyfile {self.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
            if self.use_identity_as_username:
                lines.append("use_identity_as_username true")
        self.config_path.write_text("\n".join([*lines, "", self.extra_config, ""]))

    def _command(self) -> list[str]:
        return [binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(self.config_path)]

    def _is_ready(self) -> bool:
        return all(port_open(p) for p in self._ports)
