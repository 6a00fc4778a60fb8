"""Config of the mqtt driver: which topics, how a payload becomes a reading, limits.

``profile: frigate-events`` loads ``profiles/mqtt-frigate-events.yaml`` (package data
next to this module, read through ``importlib.resources`` so installed copies have them) as
defaults; keys set on the device win, and ``fields`` / ``payload_tags`` / ``match`` are
merged key by key (so an installer adds one field without copying the whole profile).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.types import ByteSize, Duration, StrictModel
from gateway.config.yamlsource import parse_yaml
from gateway.driver import DeviceConfigBase
from gateway.fieldtypes import FieldType
from gateway.jsonpath import compile_path

if TYPE_CHECKING:
    from gateway.config.models import SerialBus, TcpBus

PROFILE_DIR = resources.files("drivers.mqtt") / "profiles"
MERGED_KEYS = ("fields", "payload_tags", "match")
PROFILE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
Paths = str | list[str]


class ValueSpec(StrictModel):
    """Where one field or tag comes from. A bare string in the config is ``{path: ...}``."""

    path: Paths = Field(description="JSON path, or a list tried in order (first present wins)")
    type: FieldType = "auto"
    base64: bool = Field(default=False, description="the value is base64 of UTF-8 text")
    required: bool = Field(default=False, description="reject the message if missing or bad")
    scale: float | None = Field(default=None, description="multiply numbers by this")

    @field_validator("path")
    @classmethod
    def _paths_valid(cls, value: Paths) -> Paths:
        for path in [value] if isinstance(value, str) else value:
            compile_path(path)
        return value


def _spec(value: Any) -> Any:
    return {"path": value} if isinstance(value, str | list) else value


class MqttDeviceConfig(DeviceConfigBase):
    """A device (camera, sensor, terminal) that publishes to the gateway's MQTT broker."""

    driver: Literal["mqtt"]
    profile: str | None = Field(
        default=None, description="ready-made mapping from drivers/mqtt/profiles/mqtt-<name>.yaml")
    topic: str | list[str] = Field(
        description="filter(s); '+name' captures a level into tag 'name', '#name' the rest")
    qos: Literal[0, 1, 2] = Field(default=1, description="1: acknowledged after commit")
    format: Literal["json", "number", "kv", "text"] = "json"
    measurement: str = Field(min_length=1)
    fields: dict[str, ValueSpec] = Field(default_factory=dict)
    payload_tags: dict[str, ValueSpec] = Field(
        default_factory=dict, description="tags taken from the payload (installer tags: tags)")
    time: Paths | None = Field(default=None, description="path(s) of the event time")
    time_format: Literal["auto", "s", "ms", "us", "ns", "iso8601"] = "auto"
    match: dict[str, list[Any]] = Field(
        default_factory=dict, description="keep only messages whose path has one of the values")
    max_payload: ByteSize = Field(default=256 * 1024, ge=16, le=64 * 1024**2)
    rate_limit: float | None = Field(
        default=None, gt=0, le=1_000_000,
        description="messages per second kept; more are dropped and counted")
    offline_after: Duration | None = Field(
        default=None, ge=1, le=30 * 86400,
        description="state offline when no message came for this long")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("profile"):
            return data
        profile = load_profile(str(data["profile"]))
        merged = {**profile, **data}
        for key in MERGED_KEYS:
            if key in profile or key in data:
                merged[key] = {**(profile.get(key) or {}), **(data.get(key) or {})}
        return merged

    @field_validator("fields", "payload_tags", mode="before")
    @classmethod
    def _bare_paths(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _spec(v) for k, v in value.items()}
        return value

    @field_validator("time")
    @classmethod
    def _time_paths(cls, value: Paths | None) -> Paths | None:
        for path in [] if value is None else [value] if isinstance(value, str) else value:
            compile_path(path)
        return value

    @field_validator("match")
    @classmethod
    def _match_paths(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path in value:
            compile_path(path)
        return value

    @field_validator("topic")
    @classmethod
    def _topics_valid(cls, value: str | list[str]) -> str | list[str]:
        from drivers.mqtt.topics import TopicPattern

        for topic in [value] if isinstance(value, str) else value:
            TopicPattern.parse(topic)
        return value

    @model_validator(mode="after")
    def _something_to_store(self) -> MqttDeviceConfig:
        if not self.fields and self.format == "json":
            raise ValueError("fields: map at least one field, e.g. {value: $.value}")
        return self

    def needs_openssl(self, bus: SerialBus | TcpBus | None) -> bool:
        """The broker link is the gateway's (mqtt: section), which answers for its TLS."""
        return False

    def topics(self) -> list[str]:
        return [self.topic] if isinstance(self.topic, str) else list(self.topic)


def load_profile(name: str) -> dict[str, Any]:
    """The mapping in ``profiles/mqtt-<name>.yaml`` (its description dropped)."""
    path = PROFILE_DIR / f"mqtt-{name.removeprefix('mqtt-').removesuffix('.yaml')}.yaml"
    if not re.fullmatch(PROFILE_NAME, name) or not path.is_file():  # no ../, no 300 chars
        known = sorted(p.name.removeprefix("mqtt-").removesuffix(".yaml")
                       for p in PROFILE_DIR.iterdir()
                       if p.name.startswith("mqtt-") and p.name.endswith(".yaml"))
        raise ValueError(f"unknown mqtt profile {name!r}; available: {', '.join(known)}")
    return dict(_read_profile(path.name))


@cache
def _read_profile(filename: str) -> dict[str, Any]:
    """Parsed once per process (package data does not change under a running check): a
    compound of 5,000 cameras on one profile spent 40% of ``iotgw check`` parsing the
    same file again for each (callers copy)."""
    path = PROFILE_DIR / filename
    doc, problems = parse_yaml(path.read_text(encoding="utf-8"), environ={})
    if doc is None or problems:
        raise ValueError(f"{path}: {problems[0].message if problems else 'not YAML'}")
    data = dict(doc.data or {})
    data.pop("description", None)
    return data
