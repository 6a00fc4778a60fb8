"""Payload formats, one module each, chosen by the device's ``profile`` key (a table)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from drivers.camera_push.config import CameraPushConfig
from drivers.camera_push.payload import Answer, Parsed


class Profile(Protocol):
    opens_gate: bool
    """True when the device acts on the answer (a barrier): the reading records it."""

    def parse(self, content_type: str, body: bytes, arrival_ns: int) -> Parsed:
        """The post decoded; raises Refused (400/415) for a payload it cannot take."""
        ...

    def answer(self, parsed: Parsed, opens: bool) -> Answer:
        """What the device is told once the event is committed."""
        ...


def _vzenith(config: CameraPushConfig) -> Profile:
    from drivers.camera_push.profiles.vzenith import VzenithPlate

    return VzenithPlate()


def _hikvision(config: CameraPushConfig) -> Profile:
    from drivers.camera_push.profiles.hikvision import HikvisionIsapi

    return HikvisionIsapi()


def _generic(config: CameraPushConfig) -> Profile:
    from drivers.camera_push.profiles.generic import GenericJson

    assert config.mapping is not None  # the config model requires it for this profile
    return GenericJson(config.mapping)


PROFILES: dict[str, Callable[[CameraPushConfig], Profile]] = {
    "vzenith-plate": _vzenith,
    "hikvision-isapi": _hikvision,
    "generic-json": _generic,
}


def make_profile(config: CameraPushConfig) -> Profile:
    return PROFILES[config.profile](config)
