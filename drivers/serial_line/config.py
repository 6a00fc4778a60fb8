"""Config of the serial_line driver: readers and gate controllers that print records."""

from __future__ import annotations

import codecs
import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.types import Duration, StrictModel
from gateway.driver import DeviceConfigBase

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus

HEX = r"^([0-9A-Fa-f]{2}\s*)+$"


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


class Framing(StrictModel):
    """How records are cut from the byte stream."""

    mode: Literal["delimiter", "fixed", "start_end"] = "delimiter"
    delimiter: str = Field(default="0A", pattern=HEX,
                           description="delimiter bytes in hex (0A = LF, 0D0A = CRLF)")
    length: int | None = Field(default=None, ge=1, le=65536, description="fixed: record bytes")
    start: str | None = Field(default=None, pattern=HEX, description="start_end: start bytes")
    end: str | None = Field(default=None, pattern=HEX, description="start_end: end bytes")
    max_length: int = Field(default=1024, ge=1, le=1 << 20,
                            description="longer records are dropped and counted (oversized)")
    idle_reset: Duration = Field(
        default=1.0, gt=0, le=3600, description="a partial record older than this is dropped "
        "(truncated): the next record starts clean")

    @model_validator(mode="after")
    def _mode_keys(self) -> Framing:
        if self.mode == "fixed" and self.length is None:
            raise ValueError("framing mode fixed needs length")
        if self.mode == "start_end" and (self.start is None or self.end is None):
            raise ValueError("framing mode start_end needs start and end (hex)")
        return self

    @property
    def delimiter_bytes(self) -> bytes:
        return _unhex(self.delimiter)

    @property
    def start_bytes(self) -> bytes:
        return _unhex(self.start or "")

    @property
    def end_bytes(self) -> bytes:
        return _unhex(self.end or "")


FieldType = Literal["str", "int", "float", "bool"]
BinaryType = Literal["uint_be", "uint_le", "int_be", "int_le", "bcd", "hex", "ascii"]


class BinaryField(StrictModel):
    name: str = Field(min_length=1)
    offset: int = Field(ge=0, le=1 << 20,
        description="byte offset in the record (after start bytes)")
    length: int = Field(ge=1, le=64)
    type: BinaryType = "uint_be"
    tag: bool = Field(default=False, description="emit as a tag instead of a field")


class BinaryRecord(StrictModel):
    """Records of bytes: a hex pattern (``??`` matches any byte) and fields by offset."""

    pattern: str | None = Field(default=None, pattern=r"^((\?\?|[0-9A-Fa-f]{2})\s*)+$",
                                description="e.g. '02 ?? ?? ?? ?? 03'; the record must have "
                                "this length and these bytes")
    fields: list[BinaryField] = Field(min_length=1)

    def matcher(self) -> list[int | None] | None:
        if self.pattern is None:
            return None
        tokens = re.findall(r"\?\?|[0-9A-Fa-f]{2}", self.pattern)
        return [None if t == "??" else int(t, 16) for t in tokens]


class SerialLineConfig(DeviceConfigBase):
    """A reader that prints (or sends) one record per event on its own serial port."""

    driver: Literal["serial_line"]
    port: str = Field(description="serial port or pyserial URL (socket://host:port ...)")
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    framing: Framing = Field(default_factory=Framing)
    encoding: str = Field(default="utf-8", description="text records: any Python codec "
                          "(gbk, gb18030, latin-1 ...)")
    pattern: str | None = Field(default=None, description="text records: regex with named "
                                "groups, e.g. '^CARD:(?P<card>\\d+);DIR:(?P<direction>IN|OUT)$'")
    tag_groups: list[str] = Field(default_factory=list,
                                  description="named groups emitted as tags; others are fields")
    types: dict[str, FieldType] = Field(default_factory=dict,
                                        description="field types by group name (default str)")
    binary: BinaryRecord | None = None
    measurement: str = Field(default="access_event", min_length=1)
    reconnect_max: Duration = Field(default=30.0, ge=0.1, le=3600,
                                    description="longest wait between reopen attempts")

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        """pyserial and asyncio only, over a local port or a pyserial URL."""
        return False

    @field_validator("encoding")
    @classmethod
    def _codec(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_parser(self) -> SerialLineConfig:
        if (self.pattern is None) == (self.binary is None):
            raise ValueError("set exactly one of pattern (text records) or binary")
        if self.pattern is not None:
            try:
                groups = set(re.compile(self.pattern).groupindex)
            except re.error as exc:
                raise ValueError(f"pattern: {exc}") from None
            if not groups:
                raise ValueError("pattern needs named groups, e.g. (?P<card>\\d+)")
            unknown = (set(self.tag_groups) | set(self.types)) - groups
            if unknown:
                raise ValueError(f"tag_groups/types name groups not in the pattern: "
                                 f"{sorted(unknown)}")
        return self
