"""Config of the synthetic driver."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from gateway.config.types import Duration
from gateway.driver import DeviceConfigBase, FieldKind

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus


class SyntheticConfig(DeviceConfigBase):
    """A device that invents readings: for the demo, benchmarks and end-to-end tests."""

    driver: Literal["synthetic"]
    measurement: str = Field(default="synthetic", min_length=1)
    interval: Duration = Field(default=1.0, ge=0.001, le=86400, description="time between readings")
    fields: int = Field(default=4, ge=1, le=200, description="float fields per reading")
    text_field: bool = Field(
        default=False, description="add a string field 'status' (stores differ on strings)")
    wake_interval: Duration = Field(
        default=0.1, gt=0, le=10,
        description="how often the task wakes; faster readings are emitted in bursts")

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        return False

    def emitted_fields(self) -> Mapping[str, FieldKind] | None:
        """f0..fN (numbers), seq, and status when text_field is on."""
        kinds: dict[str, FieldKind] = {f"f{i}": "number" for i in range(self.fields)}
        kinds["seq"] = "number"
        if self.text_field:
            kinds["status"] = "string"
        return kinds
