"""Config of the CJ/T 188 driver (one water, heat or gas meter on a serial bus)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from pydantic import Field

from drivers.cjt188.frame import METER_TYPES
from gateway.config.types import Duration
from gateway.driver import DeviceConfigBase

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus

MeterType = Literal["cold_water", "hot_water", "drinking_water", "reclaimed_water", "heat",
                    "cooling", "heat_cooling", "gas", "custom"]
assert set(get_args(MeterType)) == set(METER_TYPES)


class Cjt188Config(DeviceConfigBase):
    """A CJ/T 188-2004/2018 meter: reads DI 901F (totals, meter time, status)."""

    driver: Literal["cjt188"]
    bus: str = Field(description="name of a serial bus in `buses` (meters: usually 2400 8E1)")
    address: str = Field(pattern=r"^[0-9]{1,14}$",
                         description="meter address, up to 14 digits as printed")
    meter_type: MeterType = "cold_water"
    di_order: Literal["2004", "2018"] = Field(
        default="2004", description="byte order of the DI we send: 2004 practice 90 1F, 2018 "
        "practice 1F 90; replies are accepted in either order")
    interval: Duration = Field(default=300.0, ge=0.001, le=86400, description="time between polls")
    timeout: Duration | None = Field(default=None, gt=0, le=10,
                                     description="reply timeout; default the bus timeout")
    backoff_max: Duration = Field(default=900.0, ge=0.1, le=86400)
    offline_after: int = Field(default=2, ge=1, le=1000)
    measurement: str | None = Field(
        default=None, description="default by meter type: water_meter, heat_meter, gas_meter")

    uses_bus = True

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        """pyserial and asyncio only, over a local port or a ``socket://`` URL."""
        return False

    def bus_address(self) -> tuple[str, object]:
        return (self.bus, self.address.zfill(14))
