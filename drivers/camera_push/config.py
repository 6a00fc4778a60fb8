"""Config of the camera_push driver: which profile, the device's URL token, who may post.

A device is reached at ``/push/<id>/<token>`` on the gateway's one HTTP receiver (the
``http:`` section). The token is a secret (``token`` or ``token_file``): it is never
logged, and the path is shown as ``/push/<id>/***`` wherever it appears.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.config.types import Duration, SecretsModel, StrictModel
from gateway.driver import DeviceConfigBase
from gateway.jsonpath import compile_path

TOKEN_PATTERN = r"^[A-Za-z0-9._~-]{1,256}$"
"""URL-path-safe characters only: the token is a path segment, taken literally."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


GENERIC_TYPES = {"float": "float", "number": "float", "int": "int", "bool": "bool",
                 "str": "str", "string": "str"}
"""A generic-json field's ``type``: the mqtt driver's names (gateway/fieldtypes.py), and
the words ``number`` / ``string`` for the same."""


class GenericField(StrictModel):
    """One mapped field: where it is and what it holds. A bare path string is
    ``{path: ...}`` with no type: JSON numbers are then stored as float (so ``20`` and
    ``20.5`` are one type), booleans as bool and text as text."""

    path: str = Field(description="JSON path, e.g. $.level")
    type: Literal["float", "number", "int", "bool", "str", "string"] | None = Field(
        default=None, description="float (or number), int, bool, str (or string): a value "
        "that does not fit is refused, counted and logged, never stored as another type")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        _check_path(value, "path")
        return value


class GenericMapping(StrictModel):
    """How a ``generic-json`` post becomes a reading: JSON paths (``$.a.b[0]``)."""

    measurement: str = Field(min_length=1, max_length=128)
    fields: dict[str, GenericField] = Field(
        min_length=1, max_length=64,
        description="field name -> JSON path, or {path, type}")
    payload_tags: dict[str, str] = Field(default_factory=dict, max_length=16,
                                         description="tag name -> JSON path")
    time: str | None = Field(default=None, description="JSON path of the event time")
    time_format: Literal["s", "ms", "us", "ns", "iso8601"] = "s"
    event_id: str | None = Field(
        default=None, description="JSON path of the device's event id (retries deduplicated)")

    @field_validator("fields", mode="before")
    @classmethod
    def _bare_paths(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"path": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("payload_tags")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            _check_path(path, name)
        return value

    @field_validator("time", "event_id")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            _check_path(value, "path")
        return value


def _check_path(path: str, name: str) -> None:
    try:
        compile_path(path)
    except ValueError as exc:
        raise ValueError(f"{name}: {path!r} is not a path like $.a.b or $.list[0] "
                         f"({exc})") from None


class CameraPushConfig(DeviceConfigBase, SecretsModel):
    """A camera or access terminal that posts its events to the gateway."""

    secret_fields = ("token",)

    driver: Literal["camera_push"]
    profile: Literal["vzenith-plate", "hikvision-isapi", "generic-json"] = Field(
        description="the device's payload format")
    token: SecretStr | None = Field(
        default=None, description="the secret path segment: the device posts to "
        "/push/<id>/<token>")
    token_file: Path | None = None
    sources: list[Network] = Field(
        default_factory=list, max_length=256,
        description="addresses or networks allowed to post (e.g. 10.0.5.21, 10.0.5.0/24); "
        "empty: any address that knows the token")
    offline_after: Duration | None = Field(
        default=None, ge=1, le=30 * 86400,
        description="state offline when no post came for this long (a camera that posts "
        "only when a car passes needs a long one, or heartbeats)")
    allow_list: Path | None = Field(
        default=None, description="vzenith-plate: plates that open the barrier, one per line "
        "(or pseudonym:<hex>); re-read when it changes. Without it the answer is always no")
    mapping: GenericMapping | None = Field(
        default=None, description="generic-json: how the JSON becomes a reading")

    @field_validator("sources", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        return [ipaddress.ip_network(str(v), strict=False) if isinstance(v, str | int)
                else v for v in value]

    @field_validator("token")
    @classmethod
    def _token_usable(cls, token: SecretStr | None) -> SecretStr | None:
        import re

        if token is not None and not re.fullmatch(TOKEN_PATTERN, token.get_secret_value()):
            # The value itself is never quoted: it is a secret.
            raise ValueError("the token may hold only letters, digits and . _ ~ - "
                             "(1 to 256 characters)")
        return token

    @model_validator(mode="after")
    def _complete(self) -> CameraPushConfig:
        if self.token is None and self.token_file is None:
            raise ValueError("set token (or token_file): the device posts to "
                             f"/push/{self.id}/<token>")
        if self.profile == "generic-json" and self.mapping is None:
            raise ValueError("profile generic-json needs a mapping: {measurement: m, "
                             "fields: {value: $.value}}")
        if self.profile != "generic-json" and self.mapping is not None:
            raise ValueError(f"mapping is for profile generic-json, not {self.profile}")
        if self.allow_list is not None and self.profile != "vzenith-plate":
            raise ValueError("allow_list is for profile vzenith-plate (the camera opens "
                             "the barrier on the answer)")
        return self

    def token_value(self) -> str:
        if self.token is None:  # token_file is read into token when the model loads
            raise ValueError(f"device {self.id}: no token")
        return self.token.get_secret_value()
