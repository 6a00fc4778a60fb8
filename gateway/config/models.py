"""The config file's shape. Sections are fixed here; devices and sinks come from registries.

The top-level model is built at run time (:func:`build_config_model`) because the
``devices`` and ``sinks`` unions depend on which drivers and sink types are registered.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field, SecretStr, create_model, field_validator

from gateway.alarms.config import AlarmsSection, RuleConfig, RulesFiles
from gateway.config.types import ByteSize, Duration, SecretsModel, StrictModel, read_bounded
from gateway.driver import ID_PATTERN, DeviceConfigBase
from gateway.mqtt.replies import check_filter

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class GatewaySection(StrictModel):
    id: str = Field(pattern=ID_PATTERN, max_length=64, description="this gateway, a tag value")
    site: str = Field(pattern=ID_PATTERN, max_length=64, description="the compound, a tag value")
    data_dir: Path = Field(
        default=Path("/var/lib/iotgw"),
        description="buffer and file sink live here; relative paths are taken from the "
        "config file's directory",
    )
    shutdown_timeout: Duration = Field(default=5.0, gt=0, le=60)


class BufferSection(StrictModel):
    path: Path | None = Field(default=None, description="default: <data_dir>/buffer.db")
    max_bytes: ByteSize = Field(default=512 * 1024**2, ge=1024 * 1024, le=16 * 1024**4)
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    min_free: ByteSize | None = Field(
        default=None, ge=0, le=16 * 1024**4,
        description="free space kept on the buffer's file system; below it the buffer counts "
        "as full (when_full applies). Default: 64MiB, at most 5% of the file system; 0: off")
    flush_interval: Duration = Field(
        default=0.2, ge=0.001, le=10, description="longest a reading waits before its commit")
    synchronous: Literal["full", "normal"] = Field(
        default="full", description="full: survive power cuts; normal: survive crashes only")
    max_pending: int = Field(
        default=200_000, ge=1000, le=10_000_000,
        description="readings queued in memory before drivers wait")


class PrivacySection(StrictModel):
    """Key for pseudonymising card numbers and plates (devices list the fields)."""

    key_file: Path = Field(description="secret key, at least 16 bytes; keep it off backups")
    length: int = Field(default=16, ge=8, le=64, description="hex characters kept")

    @field_validator("key_file")
    @classmethod
    def _key_usable(cls, path: Path) -> Path:
        key = read_bounded(path, "key file").strip()
        if len(key) < 16:
            raise ValueError(f"key file {path} holds {len(key)} bytes; use at least 16 "
                             "(e.g. head -c 32 /dev/urandom | base64)")
        return path


class TlsSection(StrictModel):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(default=False, description="skip hostname verification (testing)")


class HomeAssistantSection(StrictModel):
    """Home Assistant MQTT discovery: devices and their points appear in HA / Node-RED."""

    enabled: bool = False
    prefix: str = Field(default="homeassistant", pattern=r"^[^#+]+[^/#+]$")


class MqttSection(SecretsModel):
    secret_fields = ("password",)

    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    tls: TlsSection | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: str | None = None
    base_topic: str = Field(pattern=r"^[^#+]+[^/#+]$", description="ops topics live below it")
    keepalive: Duration = Field(default=30.0, ge=1, le=65535, description="MQTT keepalive "
                                "(the client uses at least 5 s)")
    protocol: Literal["5", "3.1.1", "auto"] = "auto"
    stats_interval: Duration = Field(default=30.0, ge=0.1, le=86400,
                                     description="ops bus stats period")
    homeassistant: HomeAssistantSection = Field(
        default_factory=HomeAssistantSection,
        description="Home Assistant MQTT discovery (off by default)")
    event_measurements: list[str] | None = Field(
        default=None, description="measurements published on events/<measurement>/<id> "
        "(QoS 1); default: every measurement whose name ends in _event")
    response_topics: list[Annotated[str, AfterValidator(check_filter)]] = Field(
        default_factory=list, max_length=64,
        description="MQTT filters (e.g. ops/replies/#) a command's MQTT 5 response topic may "
        "match besides <base_topic>/#; other response topics are refused and the result "
        "goes to cmd/<verb>/result")


LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$"


def _check_listen_port(listen: str) -> str:
    if not 0 <= int(listen.rsplit(":", 1)[1]) <= 65535:
        raise ValueError(f"port must be 0..65535, got {listen!r}")
    return listen


ListenAddress = Annotated[str, AfterValidator(_check_listen_port)]
"""``host:port`` of a server the gateway runs (``[::1]:9108`` for IPv6; port 0: any)."""


class Listening(StrictModel):
    """A section for a server the gateway runs: its ``listen`` split for the server."""

    listen: ListenAddress

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class HealthSection(Listening):
    """The local health and metrics endpoint: /healthz, /readyz, /metrics, /status.

    Loopback by default: the endpoint has no authentication, so exposing it is an
    explicit choice (a scraper on another host, or a reverse proxy)."""

    enabled: bool = True
    listen: ListenAddress = Field(
        default="127.0.0.1:9108", pattern=LISTEN_PATTERN,
        description="host:port ([::1]:9108 for IPv6); port 0 picks a free port (tests)")
    max_loop_lag: Duration = Field(
        default=5.0, ge=0.01, le=300,
        description="event-loop lag beyond which /healthz fails and the systemd watchdog "
        "ping is withheld")
    commit_stall: Duration = Field(
        default=60.0, ge=1, le=86400, description="queued readings not committed for this long: "
        "the buffer counts as not writable (/healthz fails)")
    report_interval: Duration = Field(
        default=60.0, ge=0, le=86400, description="gateway_stats, gateway_sink and device_status "
        "readings into the store every so often (the dashboard's health panels); 0: off")

    @field_validator("report_interval")
    @classmethod
    def _report_not_flooding(cls, seconds: float) -> float:
        if 0 < seconds < 0.1:
            raise ValueError(f"must be 0 (off) or at least 0.1 s, got {seconds:g} s")
        return seconds


class ImagesSection(StrictModel):
    """Pictures from multipart posts, kept on disk (never in the time-series)."""

    dir: Path = Field(description="an absolute path; one folder per device, files mode 0600")
    max_bytes: ByteSize = Field(default=256 * 1024**2, ge=1024 * 1024, le=1024**4,
                                description="oldest pictures are removed beyond this")

    @field_validator("dir")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(path)!r}")
        return path


class HttpSection(Listening):
    """The one HTTP server that pushing devices (cameras, access terminals) post to.

    Devices post to ``/push/<device-id>/<token>``. It has no TLS and no other
    authentication than the token and the source addresses: bind it to the compound LAN
    interface, never to the internet. Limits are per request and per connection, so a
    slow or hostile client costs its own connections, not other devices' posts."""

    listen: ListenAddress = Field(
        pattern=LISTEN_PATTERN,
        description="host:port ([::]:8088 for IPv6); port 0 picks a free port (tests)")
    max_body: ByteSize = Field(
        default=4 * 1024**2, ge=1024, le=64 * 1024**2,
        description="larger bodies are refused with 413 while they arrive (never buffered)")
    max_buffered: ByteSize = Field(
        default=64 * 1024**2, ge=1024**2, le=4 * 1024**3,
        description="bodies held in memory at once, all posts together (a post that would "
        "pass it gets 503 and the device retries): bounds memory whatever the clients do")
    read_timeout: Duration = Field(
        default=30.0, ge=0.1, le=600,
        description="longest a request may take to send its whole body")
    header_timeout: Duration = Field(
        default=10.0, ge=0.1, le=600,
        description="longest a connection may stay open without sending a complete request "
        "(slow clients and idle keep-alive connections are closed after it)")
    commit_timeout: Duration = Field(
        default=10.0, ge=0.1, le=600,
        description="longest a post waits for its commit; then 503 and the device retries")
    max_connections: int = Field(
        default=128, ge=1, le=10_000, description="open connections at once, all sources")
    max_connections_per_source: int = Field(
        default=16, ge=1, le=10_000, description="open connections at once from one address")
    dedup_size: int = Field(
        default=4096, ge=16, le=1_000_000,
        description="event ids remembered per device to answer a retried post without "
        "storing the event twice")
    images: ImagesSection | None = Field(
        default=None, description="keep pictures from multipart posts on disk (off: only "
        "their count and size are stored)")


class SerialBus(StrictModel):
    """An RS-485 line: a local port or any pyserial URL (socket://, rfc2217://)."""

    type: Literal["serial"]
    port: str
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    timeout: Duration = Field(default=1.0, gt=0, le=60)
    inter_frame_delay: Duration | None = Field(
        default=None, ge=0, le=1, description="silence between requests; default 3.5 characters")


class TcpBus(StrictModel):
    """A TCP endpoint shared by several unit ids (a Modbus gateway, a serial server)."""

    type: Literal["tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    timeout: Duration = Field(default=2.0, gt=0, le=60)


Bus = Annotated[Union[SerialBus, TcpBus], Field(discriminator="type")]  # noqa: UP007


def _union(models: list[type], key: str) -> Any:
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator=key)]  # noqa: UP007


def build_config_model(drivers: Iterable[str] | None = None,
                       sinks: Iterable[str] | None = None) -> type[StrictModel]:
    """The top-level model with the named driver and sink types (every installed one when
    None), plus any already registered. Only the named plugins are imported: a gateway
    of Modbus meters never loads paho, a file-sink gateway never loads aiohttp."""
    from gateway.registry import load_drivers
    from gateway.sinks import load_sink_types

    device_types = load_drivers(drivers)
    sink_types = load_sink_types(sinks)
    return _build(tuple(device_types), tuple(sink_types))


@cache
def _build(driver_names: tuple[str, ...], sink_names: tuple[str, ...]) -> type[StrictModel]:
    """One model per set of registered types (a test registering a driver gets a new one)."""
    from gateway.registry import DRIVER_TYPES
    from gateway.sinks import SINK_TYPES

    device_models = [DRIVER_TYPES[n].config_model for n in driver_names] or [DeviceConfigBase]
    sink_models = [SINK_TYPES[n].config_model for n in sink_names]
    device = _union(device_models, "driver")
    sink = _union(sink_models, "type")
    return create_model(
        "GatewayConfig",
        __base__=StrictModel,
        gateway=(GatewaySection, ...),
        buffer=(BufferSection, BufferSection()),
        # [valid-type]: the unions are built at run time from the registered plugins,
        # which no static type can name.
        sinks=(list[sink],  # type: ignore[valid-type]
               Field(default_factory=list, description="none: a file sink in data_dir")),
        mqtt=(MqttSection | None, None),
        privacy=(PrivacySection | None, None),
        health=(HealthSection | None, None),
        http=(HttpSection | None, None),
        buses=(dict[Annotated[str, Field(pattern=NAME_PATTERN)], Bus], Field(default_factory=dict)),
        devices=(list[device], Field(default_factory=list)),  # type: ignore[valid-type]
        rules=(list[RuleConfig], Field(default_factory=list, max_length=100_000,
                                       description="alarm rules (docs/alarms.md)")),
        rules_files=(RulesFiles, Field(default_factory=list, max_length=256,
                                       description="files, globs, folders or pack:NAME "
                                       "with more rules")),
        alarms=(AlarmsSection, Field(default_factory=AlarmsSection,
                                     description="alarm engine settings")),
    )
