"""Config of the OSDP driver: the gateway is the control panel (CP), a device is one reader
(PD). Readers on the same ``port`` share that RS-485 line (multi-drop)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.types import Duration
from gateway.driver import DeviceConfigBase

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus


def read_scbk(path: Path) -> bytes:
    """The 16-byte secure channel base key, stored as 32 hex characters."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read key file {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"key file {path} must hold 32 hex characters") from None
    if len(key) != 16:
        raise ValueError(f"key file {path} holds {len(key)} bytes; the SCBK has 16")
    return key


class OsdpConfig(DeviceConfigBase):
    """An OSDP reader (peripheral device); readers on one port share the line."""

    driver: Literal["osdp"]
    port: str = Field(description="serial port or pyserial URL; readers on one port share "
                      "the line (multi-drop, one address each)")
    baudrate: int = Field(default=9600, ge=1200, le=230400,
                          description="the line's speed: the same for every reader on it")
    address: int = Field(default=0, ge=0, le=126, description="PD address, unique on the line")
    secure: bool = Field(default=True, description="require the secure channel")
    key_file: Path | None = Field(
        default=None, description="secure channel base key (SCBK), 32 hex characters; "
        "keep it mode 0600 and off backups")
    install_mode: bool = Field(
        default=False, description="commissioning only: let a new reader in with the "
        "default key and hand it ours. Turn off after the first connection.")
    reconnect: Duration = Field(default=5.0, ge=0.1, le=300,
                                description="how often an offline reader is retried")
    measurement: str = Field(default="access_event", min_length=1)

    @field_validator("key_file")
    @classmethod
    def _key_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_scbk(path)
        return path

    @model_validator(mode="after")
    def _secure_needs_key(self) -> OsdpConfig:
        if self.secure and self.key_file is None:
            raise ValueError("secure: true needs key_file (or set secure: false, not "
                             "recommended)")
        return self

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        """libosdp does its own AES (secure channel); pyserial and asyncio otherwise."""
        return False

    def bus_address(self) -> tuple[str, object]:
        return (f"osdp line {self.port}", self.address)
