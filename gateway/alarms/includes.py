"""``rules_files:``: rules kept in files of their own, in a ``rules.d/`` folder or in a
rule pack shipped with the gateway, merged into ``rules`` before validation.

Each entry of ``rules_files`` is

* a path (relative to the config file's folder), e.g. ``rules/water.yaml``;
* a glob, e.g. ``rules/*.yaml``; a glob that matches nothing is an error (a typo);
* a folder, e.g. ``rules.d``: every ``*.yaml``/``*.yml`` in it, in name order;
* ``pack:NAME``: the rule pack ``NAME.yaml`` shipped in the ``gateway.alarms.packs``
  package (``pack:compound`` is the compound pack, docs/alarms.md).

An included file holds a mapping with one key, ``rules:``, shaped like the config's own.
Every rule remembers the file and index it came from, so an error in it reads
``rules/water.yaml:7: rules[1].when: ...`` with that file's own line.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gateway.config.yamlsource import MAX_BYTES, Path_, SourceProblem, YamlDocument, parse_yaml

PACK_PACKAGE = "gateway.alarms.packs"
PACK_PREFIX = "pack:"
MAX_FILES = 256
"""Included files at most: a glob over a wrong folder must not read the whole disk."""


@dataclass(frozen=True)
class RuleOrigin:
    """Where rule number ``index`` of the merged list was written."""

    file: Path | str
    doc: YamlDocument
    index: int


@dataclass(frozen=True)
class IncludeProblem:
    """A problem in an included file (its own name and line) or in the entry naming it."""

    file: Path | str | None
    """None: the main config file (the ``rules_files`` entry itself)."""
    problem: SourceProblem


@dataclass
class Merged:
    """The config data with included rules appended to ``rules``, and their origins."""

    data: dict[str, Any]
    origins: dict[int, RuleOrigin]
    problems: list[IncludeProblem]

    def locate(self, path: Path_) -> tuple[Path | str | None, Path_, int | None] | None:
        """For a path inside an included rule: (its file, its path there, its line)."""
        if len(path) < 2 or path[0] != "rules" or type(path[1]) is not int:
            return None
        origin = self.origins.get(path[1])
        if origin is None:
            return None
        local: Path_ = ("rules", origin.index, *path[2:])
        return origin.file, local, origin.doc.line_of(local)


def pack_path(name: str) -> Any:
    """The shipped pack ``name`` as an importlib.resources Traversable."""
    return resources.files(PACK_PACKAGE).joinpath(f"{name}.yaml")


def pack_names() -> list[str]:
    try:
        entries = resources.files(PACK_PACKAGE).iterdir()
    except (ModuleNotFoundError, FileNotFoundError):
        return []
    return sorted(e.name[:-5] for e in entries if e.name.endswith(".yaml"))


def merge_rules(config_path: Path, data: dict[str, Any],
                environ: Mapping[str, str] | None = None) -> Merged:
    """Read every file ``data['rules_files']`` names; never raises."""
    merged = Merged(data, {}, [])
    entries = data.get("rules_files")
    if not isinstance(entries, list) or not entries:
        return merged  # (a wrong type is reported by the model)
    own = data.get("rules")
    rules: list[Any] = list(own) if isinstance(own, list) else []
    if own is not None and not isinstance(own, list):
        return merged
    base = config_path.resolve().parent
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        if not isinstance(entry, str):
            continue
        where = ("rules_files", position)
        try:
            files = _expand(entry, base)
        except LookupError as exc:
            merged.problems.append(IncludeProblem(None, SourceProblem(None, where, str(exc))))
            continue
        for name, text in files:
            if name in seen:
                continue
            seen.add(name)
            if len(seen) > MAX_FILES:
                merged.problems.append(IncludeProblem(None, SourceProblem(
                    None, where, f"more than {MAX_FILES} rule files")))
                break
            _add_file(merged, rules, name, text, environ)
    merged.data = {**data, "rules": rules}
    return merged


def _add_file(merged: Merged, rules: list[Any], name: str, text: str | None,
              environ: Mapping[str, str] | None) -> None:
    if text is None:
        merged.problems.append(IncludeProblem(name, SourceProblem(
            None, (), "cannot read the file (or it is larger than 4 MiB, or not UTF-8)")))
        return
    doc, problems = parse_yaml(text, environ)
    merged.problems.extend(IncludeProblem(name, p) for p in problems)
    if doc is None:
        return
    if not isinstance(doc.data, dict) or set(doc.data) != {"rules"} \
            or not isinstance(doc.data["rules"], list):
        merged.problems.append(IncludeProblem(name, SourceProblem(
            1, (), "a rules file holds one key, `rules:`, with a list of rules")))
        return
    for index, rule in enumerate(doc.data["rules"]):
        merged.origins[len(rules)] = RuleOrigin(name, doc, index)
        rules.append(rule)


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            return None
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _expand(entry: str, base: Path) -> list[tuple[str, str | None]]:
    """(display name, text or None when unreadable) for each file an entry names."""
    if entry.startswith(PACK_PREFIX):
        name = entry[len(PACK_PREFIX):]
        try:
            resource = pack_path(name)
            if not resource.is_file():
                raise FileNotFoundError(name)
            return [(entry, resource.read_text("utf-8"))]
        except (OSError, ModuleNotFoundError, UnicodeDecodeError, ValueError):
            known = ", ".join(pack_names()) or "none"
            raise LookupError(f"no shipped rule pack {name!r} (packs: {known})") from None
    path = Path(entry).expanduser()
    path = path if path.is_absolute() else base / path
    if any(c in entry for c in "*?["):
        found = sorted(glob.glob(str(path)))
        if not found:
            raise LookupError(f"{entry!r} matches no file")
        return [(name, _read(Path(name))) for name in found if Path(name).is_file()]
    if path.is_dir():
        entries = sorted(p for p in path.iterdir()
                         if p.suffix in (".yaml", ".yml") and p.is_file())
        return [(str(p), _read(p)) for p in entries]
    if not path.exists():
        raise LookupError(f"no rules file {str(path)!r}")
    return [(str(path), _read(path))]
