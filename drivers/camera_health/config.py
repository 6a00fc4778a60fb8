"""Config of the camera_health driver: one camera probed in layers (TCP, RTSP, ONVIF)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator

from drivers.event_stream.config import HOST_PATTERN
from gateway.config.types import Duration, SecretsModel
from gateway.driver import DeviceConfigBase


class CameraHealthConfig(DeviceConfigBase, SecretsModel):
    """Is the camera up, does it take our credentials, is its clock right?"""

    secret_fields: ClassVar[tuple[str, ...]] = ("password",)

    driver: Literal["camera_health"]
    host: str = Field(pattern=HOST_PATTERN, max_length=253)
    rtsp_port: int = Field(default=554, ge=1, le=65535)
    rtsp_path: str | None = Field(
        default=None, max_length=256,
        description="stream path DESCRIBEd to check credentials and path (e.g. "
        "/Streaming/Channels/101, /cam/realmonitor?channel=1&subtype=0); OPTIONS only "
        "when unset")
    username: str | None = Field(default=None, max_length=64)
    rtsp_auth: Literal["digest", "basic"] = Field(
        default="digest", description="digest: a Basic challenge is refused (auth_failed) "
        "and the password never sent in clear; basic: only for a camera set to Basic")
    password: SecretStr | None = None
    password_file: Path | None = None
    onvif: bool = Field(default=False, description="ask ONVIF GetSystemDateAndTime (no "
                        "auth needed) and report the camera's clock skew")
    onvif_port: int = Field(default=80, ge=1, le=65535)
    onvif_path: str = Field(default="/onvif/device_service", max_length=256)
    interval: Duration = Field(default=30.0, ge=1, le=3600, description="time between probes")
    timeout: Duration = Field(default=5.0, ge=0.1, le=60,
                              description="per step (connect, each RTSP answer, ONVIF)")
    max_skew: Duration = Field(
        default=300.0, ge=1, le=86400,
        description="clock skew beyond this is counted and logged (WS-UsernameToken auth "
        "fails from about 5 minutes)")
    measurement: str = Field(default="camera_health", min_length=1, max_length=64)

    @field_validator("rtsp_path", "onvif_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or any(
                c in value for c in " \r\n\t")):
            raise ValueError("must start with / and hold no spaces or line breaks")
        return value
