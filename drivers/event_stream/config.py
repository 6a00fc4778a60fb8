"""Config of the event_stream driver: a camera, NVR channel or access terminal whose
events the gateway reads from the device's own HTTP event stream.

Devices with the same ``host`` and ``port`` share one stream (one per host: an NVR with
16 channels is one connection, not 16), so they must agree on how to connect; the
cross-check in ``__init__`` says which key differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator

from gateway.config.types import ByteSize, Duration, SecretsModel
from gateway.driver import DeviceConfigBase

HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[?[0-9A-Fa-f:.]+\]?$"

CONNECTION_KEYS = ("profile", "scheme", "verify_tls", "auth", "username", "password",
                   "heartbeat", "silence", "clear_after", "connect_timeout", "reconnect_max",
                   "auth_retry", "max_part")
"""Settings of the shared stream: every device on one host:port must have the same."""


class EventStreamConfig(DeviceConfigBase, SecretsModel):
    """Events from a Hikvision (ISAPI alertStream) or Dahua (eventManager) device."""

    secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    driver: Literal["event_stream"]
    profile: Literal["hikvision", "dahua"] = Field(
        description="hikvision: /ISAPI/Event/notification/alertStream; dahua: "
        "/cgi-bin/eventManager.cgi?action=attach&codes=[All]")
    host: str = Field(pattern=HOST_PATTERN, max_length=253,
                      description="the device's address; devices on one host share its stream")
    port: int = Field(default=80, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    verify_tls: bool = Field(default=True, description="false for self-signed device "
                             "certificates (LAN only)")
    auth: Literal["digest", "basic", "none"] = Field(
        default="digest", description="digest (the devices' default); basic only where the "
        "device is configured for it")
    username: str | None = Field(default=None, max_length=64)
    password: SecretStr | None = None
    password_file: Path | None = None
    channels: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=list, max_length=256,
        description="channels (1-based) this device takes from the host's stream; all when "
        "empty. Dahua's index 0 is channel 1.")
    events: list[str] = Field(
        default_factory=list, max_length=256,
        description="event codes kept (VideoMotion, vmd, AccessControllerEvent...); all "
        "when empty")
    heartbeat: int = Field(default=5, ge=1, le=60,
                           description="seconds between the device's heartbeats (Dahua)")
    silence: Duration | None = Field(
        default=None, ge=1, le=3600,
        description="reconnect when no part came for this long; default: 2.5 heartbeat "
        "intervals, so silence is caught within three (Dahua); 60s (Hikvision, which has "
        "no guaranteed heartbeat)")
    clear_after: Duration = Field(
        default=5.0, ge=1.5, le=3600,
        description="Hikvision: an active event not repeated for this long has ended")
    connect_timeout: Duration = Field(default=5.0, ge=0.1, le=60)
    reconnect_max: Duration = Field(default=60.0, ge=1, le=3600,
                                    description="longest pause between reconnects")
    auth_retry: Duration = Field(
        default=300.0, ge=1, le=86400,
        description="pause after the device refused our credentials (retrying fast locks "
        "accounts)")
    max_part: ByteSize = Field(default=2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024,
                               description="larger parts (pictures) are skipped, counted")
    measurement: str = Field(default="camera_event", min_length=1, max_length=64)
    access_measurement: str = Field(default="access_event", min_length=1, max_length=64)
    backfill: bool = Field(
        default=False, description="Hikvision access terminals: after an outage or a "
        "restart, fetch the events missed from the terminal's log (AcsEvent search)")
    backfill_max: Duration = Field(default=7 * 86400.0, ge=60, le=90 * 86400,
                                   description="never backfill further back than this")
    backfill_page: int = Field(default=30, ge=1, le=1000,
                               description="maxResults per search page")
    backfill_major: int = Field(default=5, ge=0, le=255,
                                description="majorEventType searched (5: events; 0: all)")
    backfill_minor: int = Field(default=0, ge=0, le=1023,
                                description="subEventType searched (0: all)")

    @model_validator(mode="after")
    def _consistent(self) -> EventStreamConfig:
        if self.auth != "none" and not self.username:
            raise ValueError(f"auth: {self.auth} needs username and password (or "
                             "password_file); auth: none for an open device")
        if self.backfill and self.profile != "hikvision":
            raise ValueError("backfill: only the hikvision profile has an event log to "
                             "search")
        if self.profile == "dahua" and self.silence is not None \
                and self.silence <= self.heartbeat:
            raise ValueError(f"silence: must be longer than heartbeat ({self.heartbeat}s); "
                             "2.5 heartbeats is the default")
        return self

    def silence_seconds(self) -> float:
        if self.silence is not None:
            return self.silence
        return 2.5 * self.heartbeat if self.profile == "dahua" else 60.0

    def base_url(self) -> str:
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def connection(self) -> tuple[object, ...]:
        """What the devices sharing this host's stream must agree on."""
        return tuple(getattr(self, key) for key in CONNECTION_KEYS)
