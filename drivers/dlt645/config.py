"""Config of the DL/T 645 driver (one electricity meter on a serial bus)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from drivers.dlt645.points import DEFAULT_POINTS
from drivers.dlt645.protocol import DIALECTS
from drivers.serialbus.bcd import BcdFormat
from gateway.config.types import Duration, StrictModel
from gateway.driver import DeviceConfigBase, FieldKind

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus


class CustomPoint(StrictModel):
    """A data identifier missing from the built-in table."""

    di: str = Field(pattern=r"^(0x)?[0-9A-Fa-f]{4}([0-9A-Fa-f]{4})?$",
                    description="data identifier in hex as printed in the standard, "
                    "e.g. 0201FF00 (2007) or B611 (1997)")
    format: str = Field(description="BCD format as in the standard, e.g. XXXXXX.XX; a "
                        "leading '-' marks a signed value (top bit is the sign): -XXX.XXX")
    unit: str = ""

    @field_validator("format")
    @classmethod
    def _format_ok(cls, value: str) -> str:
        BcdFormat.parse(value)
        return value

    @property
    def di_value(self) -> int:
        return int(self.di.lower().removeprefix("0x"), 16)


class Dlt645Config(DeviceConfigBase):
    """A DL/T 645-2007 (or -1997) electricity meter on an RS-485 bus."""

    driver: Literal["dlt645"]
    bus: str = Field(description="name of a serial bus in `buses` (default 2400 8E1 meters)")
    address: str = Field(pattern=r"^[0-9]{1,12}$",
                         description="meter address as printed on the meter (up to 12 "
                         "digits, left-padded with zeros)")
    protocol: Literal["2007", "1997"] = "2007"
    points: list[str] | None = Field(
        default=None, description="built-in point names or names from custom_points; "
        "default energy_total/energy_forward, voltage_a, current_a, power_total")
    custom_points: dict[str, CustomPoint] = Field(default_factory=dict)
    interval: Duration = Field(default=60.0, ge=0.001, le=86400, description="time between polls")
    timeout: Duration | None = Field(default=None, gt=0, le=10,
                                     description="reply timeout; default the bus timeout")
    backoff_max: Duration = Field(default=300.0, ge=0.1, le=86400,
                                  description="longest pause between probes of a dead meter")
    offline_after: int = Field(default=2, ge=1, le=1000,
                               description="failed polls in a row before 'offline'")
    measurement: str = Field(default="energy_meter", min_length=1)

    uses_bus = True

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        """pyserial and asyncio only, over a local port or a ``socket://`` URL."""
        return False

    def bus_address(self) -> tuple[str, object]:
        return (self.bus, self.address.zfill(12))

    def point_names(self) -> list[str]:
        return list(self.points if self.points is not None else DEFAULT_POINTS[self.protocol])

    def emitted_fields(self) -> Mapping[str, FieldKind] | None:
        """One number per point (every DL/T 645 value is BCD)."""
        return {name: "number" for name in self.point_names()}

    @model_validator(mode="after")
    def _points_known(self) -> Dlt645Config:
        table = DIALECTS[self.protocol].points
        size = DIALECTS[self.protocol].di_size * 2
        for name, custom in self.custom_points.items():
            if len(custom.di.lower().removeprefix("0x")) != size:
                raise ValueError(f"custom point {name!r}: DL/T 645-{self.protocol} "
                                 f"identifiers have {size} hex digits")
        unknown = [p for p in self.point_names() if p not in table and p not in self.custom_points]
        if unknown:
            raise ValueError(f"unknown points {unknown} for DL/T 645-{self.protocol}; built in: "
                             + ", ".join(table) + " (or define them in custom_points)")
        return self
