"""Config of one Modbus device: which bus and unit, which points (a profile and/or inline)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.modbus.planner import PROTOCOL_MAX_BITS, PROTOCOL_MAX_REGISTERS, TCP, Limits, WireCost
from drivers.modbus.points import Point
from gateway.config.types import Duration, StrictModel
from gateway.driver import DeviceConfigBase, FieldKind

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus


class PointOverride(StrictModel):
    """Per-device changes to a profile point (e.g. a CT ratio as scale)."""

    scale: float | None = None
    offset: float | None = None
    precision: int | None = Field(default=None, ge=0, le=12)
    unit: str | None = None
    on_change: bool | None = None
    deadband: float | None = Field(default=None, ge=0, le=1e12)
    enabled: bool = True


class ModbusConfig(DeviceConfigBase):
    """A Modbus TCP or RTU device on a bus from ``buses``.

    Serial bus: RTU; serial bus with ``port: socket://host:port``: RTU over TCP (serial
    device servers); tcp bus: Modbus TCP. Points come from ``profile`` (a file in
    drivers/modbus/profiles or $IOTGW_PROFILES), from ``points``, or both (inline points
    are added).
    """

    driver: Literal["modbus"]
    bus: str = Field(description="name of an entry in buses")
    unit: int = Field(ge=0, le=255, description="unit id: 1..247 on serial buses")
    profile: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                max_length=64,
                                description="<profile>.yaml in $IOTGW_PROFILES or the shipped "
                                "drivers/modbus/profiles")
    select: list[str] | None = Field(
        default=None, min_length=1, max_length=1024,
        description="only these profile points, by name (default: all of them); the other "
        "profile points are neither read nor written")
    points: list[Point] = Field(default_factory=list, description="points added to the profile")
    overrides: dict[str, PointOverride] = Field(
        default_factory=dict, description="per-point changes to profile points, by name")
    measurement: str | None = Field(default=None, min_length=1,
                                    description="default: the profile's, else 'modbus'")
    interval: Duration = Field(default=10.0, ge=0.001, le=86400)
    timeout: Duration | None = Field(default=None, gt=0, le=60,
                                     description="per request; default: the bus timeout")
    retries: int = Field(default=1, ge=0, le=5, description="extra tries while online")
    backoff_max: Duration = Field(
        default=60.0, ge=0.1, le=86400,
        description="longest pause between probes of an offline device")
    max_registers: int = Field(default=PROTOCOL_MAX_REGISTERS, ge=1, le=PROTOCOL_MAX_REGISTERS)
    max_bits: int = Field(default=PROTOCOL_MAX_BITS, ge=1, le=PROTOCOL_MAX_BITS)
    max_gap: int | None = Field(
        default=None, ge=0, le=PROTOCOL_MAX_BITS,
        description="unused registers a read may span between points; default: decided by "
        "cost (TCP: any that fits one read; RTU: gaps cheaper than one more request)")
    turnaround: Duration | None = Field(
        default=None, ge=0, le=1,
        description="how soon the device starts answering, for the RTU cost model; "
        "default 5 ms")
    verify_writes: bool = Field(default=True, description="read back after a write")

    uses_bus: ClassVar[bool] = True

    @model_validator(mode="after")
    def _has_points(self) -> ModbusConfig:
        if self.profile is None and not self.points:
            raise ValueError("give a profile or points (or both)")
        if self.select is not None and self.profile is None:
            raise ValueError("select picks points of a profile: give profile too")
        if self.select is not None and len(set(self.select)) != len(self.select):
            raise ValueError("select names a point twice")
        names = [p.name for p in self.points]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate point names: {', '.join(dupes)}")
        return self

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        """Modbus TCP is the driver's own client; RTU (serial or ``socket://``) is
        pymodbus's, whose transport imports ``ssl`` without a fallback."""
        return bus is None or bus.type != "tcp"

    def bus_address(self) -> tuple[str, object] | None:
        return (self.bus, self.unit)

    def emitted_fields(self) -> Mapping[str, FieldKind] | None:
        """Every point is a field: strings are strings, bool/bit/coils booleans, and the
        rest numbers (scale and offset may make an integer register a float)."""
        from drivers.modbus.profiles import resolve_points

        try:
            points, _measurement = resolve_points(self)
        except Exception:  # an unknown profile is reported by its own check
            return None
        kinds: dict[str, FieldKind] = {}
        for point in points:
            kind = point.kind
            kinds[point.name] = ("string" if kind == "string" else
                                 "bool" if kind in ("bool", "bit") else "number")
        return kinds

    def limits(self, cost: WireCost = TCP) -> Limits:
        """The device's own limits, priced by ``cost`` (its bus's transport)."""
        return Limits(self.max_registers, self.max_bits, self.max_gap, cost)
