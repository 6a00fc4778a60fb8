"""Load, validate and resolve a gateway config file; report every problem at once.

Every problem is formatted ``FILE:LINE: yaml.path: message`` so installers can jump to it.
Nothing is started unless the whole file is valid.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.alarms.checks import CONFIG_DIR
from gateway.alarms.includes import merge_rules
from gateway.config.crosscheck import cross_check
from gateway.config.messages import describe
from gateway.config.models import build_config_model
from gateway.config.yamlsource import (
    MAX_BYTES,
    Path_,
    SourceProblem,
    YamlDocument,
    parse_yaml,
)
from gateway.driver import DeviceConfigBase
from gateway.errors import ConfigError
from gateway.sinks.base import SinkConfigBase


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config plus what follows from it (absolute paths, effective sinks)."""

    path: Path
    model: Any
    digest: str
    data_dir: Path
    buffer_path: Path
    sinks: Sequence[SinkConfigBase]

    @property
    def devices(self) -> Sequence[DeviceConfigBase]:
        return [d for d in self.model.devices if d.enabled]


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top)"


def _plugin_names(data: dict[str, Any]) -> tuple[set[str] | None, set[str] | None]:
    """The driver and sink types the config names, so only those are imported; None (load
    every installed one) where an item names none or an unknown one, so that the error
    lists every type there is."""
    from gateway.registry import DRIVER_GROUP, DRIVER_TYPES, SINK_GROUP, plugin_entry_points
    from gateway.sinks import SINK_TYPES

    def named(items: object, key: str, group: str, registered: dict[str, Any]
              ) -> set[str] | None:
        if items is None:
            return set()
        if not isinstance(items, list):
            return None
        known = set(plugin_entry_points(group)) | set(registered)
        names: set[str] = set()
        for item in items:
            name = item.get(key) if isinstance(item, dict) else None
            if not isinstance(name, str) or name not in known:
                return None
            names.add(name)
        return names

    return (named(data.get("devices"), "driver", DRIVER_GROUP, DRIVER_TYPES),
            named(data.get("sinks"), "type", SINK_GROUP, SINK_TYPES))


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    path = Path(path)
    raw = _read_bounded(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: config is not UTF-8 ({exc.reason})"]) from None

    doc, source_problems = parse_yaml(text, environ)
    problems = [_format(path, p) for p in source_problems]
    if doc is None:
        raise ConfigError(problems)
    if not isinstance(doc.data, dict):
        raise ConfigError([f"{path}:1: (top): the config must be a mapping of sections"])

    merged = merge_rules(path, doc.data, environ)  # rules_files: included rules
    problems += [_format(path, SourceProblem(doc.line_of(p.problem.path), p.problem.path,
                                             p.problem.message))
                 if p.file is None else _format(Path(p.file), p.problem)
                 for p in merged.problems]
    data = merged.data
    view = YamlDocument(data, doc.lines)

    def located(problem: SourceProblem) -> str:
        found = merged.locate(problem.path)
        if found is None:
            return _format(path, problem)
        file, local, line = found
        return _format(path if file is None else Path(file),
                       SourceProblem(line, local, problem.message))

    model_cls = build_config_model(*_plugin_names(data))
    try:
        model = model_cls.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems += [located(_locate(view, err)) for err in errors]
        problems += [located(SourceProblem(doc.line_of(p), p, message))
                     for p, message in _cross_check_valid_items(model_cls, data, errors)]
        raise ConfigError(_sorted(problems)) from None
    token = CONFIG_DIR.set(path.resolve().parent)
    try:
        problems += [located(SourceProblem(doc.line_of(p), p, message))
                     for p, message in cross_check(model)]
    finally:
        CONFIG_DIR.reset(token)
    if problems:
        raise ConfigError(_sorted(problems))
    return _resolve(path, model, raw)


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refused beyond MAX_BYTES before more than that is read (a
    runaway generated file, or /dev/zero, must not cost the gateway its memory)."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError([f"{path}: the file is larger than {MAX_BYTES // 1024**2} MiB, the "
                           "most a config may be (a compound of 25,000 devices fits)"])
    return raw


_ITEM_REFERENCE = re.compile(r"\b([a-z_]+)\[(\d+)\]")


def _cross_check_valid_items(model_cls: Any, data: dict[str, Any],
                             errors: Sequence[Any]) -> list[tuple[Path_, str]]:
    """The second pass over the list items that are valid on their own, so an installer
    sees a duplicate id next to a typo in one run instead of one fix later.

    Only when every per-item error sits inside an item of a top-level list (a device, a
    sink): the invalid items are left out, the rest validated again and cross-checked,
    and positions in the findings (paths, and ``devices[N]`` in messages) mapped back to
    the file. A broken section elsewhere would make the checks guess, so they wait."""
    bad: dict[str, set[int]] = {}
    for err in errors:
        loc = err["loc"]
        if len(loc) < 2 or not isinstance(data.get(loc[0]), list) or type(loc[1]) is not int:
            return []
        bad.setdefault(loc[0], set()).add(loc[1])
    pruned = dict(data)
    kept: dict[str, list[int]] = {}
    for section, indices in bad.items():
        kept[section] = [i for i in range(len(data[section])) if i not in indices]
        pruned[section] = [data[section][i] for i in kept[section]]
    try:
        model = model_cls.model_validate(pruned)
    except ValidationError:
        return []

    def original(section: str, index: int) -> int:
        return kept[section][index] if section in kept else index

    findings = []
    for where, message in cross_check(model):
        if len(where) >= 2 and isinstance(where[0], str) and type(where[1]) is int:
            where = (where[0], original(where[0], where[1]), *where[2:])
        message = _ITEM_REFERENCE.sub(
            lambda m: f"{m[1]}[{original(m[1], int(m[2]))}]", message)
        findings.append((where, message))
    return findings


def _resolve(path: Path, model: Any, raw: bytes) -> LoadedConfig:
    from gateway.sinks import SINK_TYPES

    base = path.resolve().parent
    data_dir = model.gateway.data_dir
    data_dir = Path(os.path.normpath(base / data_dir))
    buffer_path = model.buffer.path or Path("buffer.db")
    buffer_path = buffer_path if buffer_path.is_absolute() else data_dir / buffer_path
    sinks = list(model.sinks) or [SINK_TYPES["file"].config_model.model_validate({"type": "file"})]
    return LoadedConfig(
        path=path, model=model, digest=hashlib.sha256(raw).hexdigest()[:16],
        data_dir=data_dir, buffer_path=buffer_path, sinks=sinks,
    )


def _locate(doc: YamlDocument, err: Any) -> SourceProblem:
    """Map pydantic's ``loc`` onto the YAML document, skipping union tags and the like."""
    node: Any = doc.data
    path: list[str | int] = []
    loc = err["loc"]
    for position, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
        elif err["type"] == "missing" and position == len(loc) - 1:
            path.append(part)
            return SourceProblem(doc.line_of(tuple(path[:-1])), tuple(path), describe(err))
    if err["type"] == "union_tag_invalid" and isinstance(node, dict):
        key = str(err["ctx"]["discriminator"]).strip("'")
        if key in node:
            path.append(key)
    return SourceProblem(doc.line_of(tuple(path)), tuple(path), describe(err))


def _format(path: Path, problem: SourceProblem) -> str:
    where = f"{path}:{problem.line}" if problem.line is not None else str(path)
    return f"{where}: {format_path(problem.path)}: {problem.message}"


def _sorted(problems: list[str]) -> list[str]:
    def line_key(text: str) -> int:
        try:
            return int(text.split(":", 2)[1])
        except (IndexError, ValueError):
            return 0

    return sorted(dict.fromkeys(problems), key=line_key)
