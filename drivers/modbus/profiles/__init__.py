"""Device profiles: reusable point maps, ``<name>.yaml`` in this package's folder.

300 meters of one model share one profile instead of 300 copies of a register map.
Errors name the profile file, the line and the point, like config errors do.

Search order: the directories in ``$IOTGW_PROFILES`` (os.pathsep separated), then the
profiles shipped next to this module. Those are package data read through
``importlib.resources``, so an installed wheel finds them wherever it was installed (a
path relative to the checkout found nothing once installed).
"""

from __future__ import annotations

import os
from dataclasses import replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from drivers.modbus.config import ModbusConfig
from drivers.modbus.planner import PROTOCOL_MAX_BITS, TCP, Limits, WireCost
from drivers.modbus.points import Point
from gateway.config.messages import listed_names
from gateway.config.types import StrictModel
from gateway.config.yamlsource import parse_yaml
from gateway.errors import ConfigError

SHIPPED: Traversable = resources.files(__name__)


class Profile(StrictModel):
    """A device model's point map, with where it came from."""

    name: str
    manufacturer: str | None = None
    model: str | None = None
    source: str = Field(description="the register map document this profile is based on")
    notes: str | None = None
    measurement: str = Field(min_length=1)
    byte_order: str | None = Field(default=None, description="informational")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="keys applied to every point unless it sets them")
    max_registers: int | None = Field(default=None, ge=1, le=125)
    max_gap: int | None = Field(
        default=None, ge=0, le=PROTOCOL_MAX_BITS, description="only for a model known to "
        "reject reads over unmapped registers; default: the planner's cost model")
    points: list[Point]


def profile_dirs() -> list[Traversable]:
    extra = [Path(p) for p in os.environ.get("IOTGW_PROFILES", "").split(os.pathsep) if p]
    return [*extra, SHIPPED]


def profile_names() -> list[str]:
    """Every profile name found, installer folders and shipped ones together."""
    return sorted({entry.name.removesuffix(".yaml") for folder in profile_dirs()
                   if folder.is_dir() for entry in folder.iterdir()
                   if entry.name.endswith(".yaml") and entry.is_file()})


def find_profile(name: str) -> Traversable:
    for folder in profile_dirs():
        path = folder / f"{name}.yaml"
        if path.is_file():
            return path
    known = profile_names()
    raise ConfigError([f"unknown profile {name!r}; known: {', '.join(known) or 'none'}"])


def load_profile(name: str) -> Profile:
    path = find_profile(name)
    key = (str(path), _mtime(path))
    profile = _LOADED.get(key)
    if profile is None:
        profile = _LOADED[key] = _load_file(path)
    return profile


def _mtime(path: Traversable) -> int:
    """Part of the cache key, so an edited installer profile is read again on reload;
    package data in a zip has no mtime and never changes under a running gateway."""
    return path.stat().st_mtime_ns if isinstance(path, Path) else 0


_LOADED: dict[tuple[str, int], Profile] = {}
"""Parsed profiles by (location, mtime): a file is parsed once per version."""


def _load_file(path: Traversable) -> Profile:
    doc, problems = parse_yaml(path.read_text(encoding="utf-8"), environ={})
    if problems or doc is None:
        raise ConfigError([f"{path}:{p.line or '?'}: {p.message}" for p in problems])
    data = doc.data
    if isinstance(data, dict) and isinstance(data.get("points"), list):
        defaults = data.get("defaults") or {}
        data = {**data, "points": [{**defaults, **p} if isinstance(p, dict) else p
                                   for p in data["points"]]}
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_locate(path, doc, data, err) for err in exc.errors()]) from None
    names = [p.name for p in profile.points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError([f"{path}: duplicate point names: {', '.join(dupes)}"])
    return profile


def _locate(path: Traversable, doc: Any, data: Any, err: Any) -> str:
    loc = tuple(err["loc"])
    line = doc.line_of(loc) or "?"
    where = ".".join(str(part) for part in loc)
    if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int):
        try:
            point = data["points"][loc[1]].get("name", "?")
        except (IndexError, AttributeError, KeyError):
            point = "?"
        where = f"points[{loc[1]}] ({point})" + "".join(f".{p}" for p in loc[2:])
    return f"{path}:{line}: {where}: {err['msg']}"


def quoted_names(names: list[str]) -> str:
    """Point names as an error line lists them: quoted (an empty or blank name stays
    visible), each cut to 40 characters, at most ``NAMES_SHOWN`` (a generated config
    named 1,000 unknown points, and one 100 kB name, all in one line)."""
    return listed_names(names, lambda n: repr(n if len(n) <= 40 else n[:40] + "..."))


class PointsProblem(ConfigError):
    """A device's points do not resolve; ``setting`` is the device setting at fault
    (``select``, ``overrides`` or ``points``), where the error is reported."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__([problem])
        self.setting = setting


def resolve_points(config: ModbusConfig) -> tuple[list[Point], str]:
    """The device's effective points and measurement: profile (or its ``select``ed points)
    + overrides + inline points."""
    points: list[Point] = []
    measurement = config.measurement
    if config.profile is not None:
        profile = load_profile(config.profile)
        measurement = measurement or profile.measurement
        known = {p.name for p in profile.points}
        unknown = sorted(set(config.select or ()) - known)
        if unknown:
            raise PointsProblem("select", f"select names points not in profile "
                                f"{config.profile!r}: {quoted_names(unknown)}")
        chosen = known if config.select is None else set(config.select)
        unknown = sorted(set(config.overrides) - chosen)
        if unknown:
            where = "in profile" if config.select is None else "selected from profile"
            raise PointsProblem("overrides", f"overrides name points not {where} "
                                f"{config.profile!r}: {quoted_names(unknown)}")
        for point in profile.points:
            if point.name not in chosen:
                continue
            override = config.overrides.get(point.name)
            if override is None:
                points.append(point)
            elif override.enabled:
                changes = override.model_dump(exclude_none=True, exclude={"enabled"})
                points.append(point.model_copy(update=changes))
    names = {p.name for p in points}
    clash = sorted(names & {p.name for p in config.points})
    if clash:
        raise PointsProblem("points", f"inline points repeat profile points: "
                            f"{', '.join(clash)} (use overrides to change a profile point)")
    points.extend(config.points)
    if not points:  # a device without a point reads nothing, silently: refuse it here
        raise PointsProblem("overrides", "no points left to read: overrides disable every "
                            + ("selected" if config.select is not None else "profile")
                            + " point")
    return points, measurement or "modbus"


def limits_for(config: ModbusConfig, cost: WireCost = TCP) -> Limits:
    """Device limits: the device's own, tightened by what its profile says, priced by
    ``cost`` (the bus's transport)."""
    limits = config.limits(cost)
    if config.profile is None:
        return limits
    profile = load_profile(config.profile)
    fields = config.model_fields_set
    return replace(
        limits,
        max_registers=min(limits.max_registers, profile.max_registers or limits.max_registers)
        if "max_registers" not in fields else limits.max_registers,
        max_gap=profile.max_gap if profile.max_gap is not None and "max_gap" not in fields
        else limits.max_gap)
