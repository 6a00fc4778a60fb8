"""YAML parsing that remembers where every value came from, and refuses hostile input.

The only module that imports ruamel.yaml. It returns plain dicts/lists (what pydantic
wants) plus a map from each value's path to its line, so every error can point the
installer at the line to fix. ``${VAR}`` / ``${VAR:-default}`` are expanded here, where
the line of a missing variable is still known.

A config file is read on SIGHUP by a running gateway and by ``iotgw check`` in a unit's
``ExecStartPre``, so no file may crash either: everything wrong with a document comes
back as a :class:`SourceProblem`. ruamel scans and parses (its parser is a state
machine, not recursive); this module builds the plain data from the parser's events
with an explicit stack, which is where the limits live:

* only the standard YAML types are read (``!!python/...`` and local tags are refused);
* nesting deeper than :data:`MAX_DEPTH` is refused;
* aliases and merge keys (``<<: *common``) work, but the values the document stands for
  (each alias counted as the values it repeats) may number at most :data:`MAX_NODES`,
  so an alias bomb is refused after that many steps, in linear time and memory, at the
  top-level key that expands it;
* the text may be at most :data:`MAX_TEXT` characters (the loader checks the file size
  before reading it; profiles pass through here too).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
)
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

Path_ = tuple[str | int, ...]

MAX_BYTES = 4 * 1024 * 1024
"""Largest config file read (4 MiB). A compound of 2,000 devices written out in full is
about 300 KiB; 4 MiB holds ~27,000 (``iotgw check`` ~30 s of CPU and ~250 MiB on a
2.4 GHz core, docs/benchmarks.md): anything larger is a generated file gone wrong, and
parsing it would cost a Pi minutes and more memory than it has to spare."""

MAX_TEXT = MAX_BYTES
"""Characters of YAML text parsed (a UTF-8 file of MAX_BYTES has at most this many)."""

MAX_DEPTH = 32
"""Deepest nesting accepted; the shipped configs and profiles use at most 6 levels."""

MAX_NODES = 1_000_000
"""Values (scalars, mappings, lists) the document may expand to, aliases included: ~8x
what the largest file accepted holds without aliases, far below an alias bomb."""

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")
_CORE = "tag:yaml.org,2002:"
_MERGE = _CORE + "merge"


@dataclass
class SourceProblem:
    line: int | None
    path: Path_
    message: str


@dataclass
class YamlDocument:
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    """1-based line of each value; for a mapping entry, the line of its key."""

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(path[:cut])
            if line is not None:
                return line
        return None


class _Refused(Exception):
    """A document this module will not read; carries the problem to report."""

    def __init__(self, problem: SourceProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _yaml() -> YAML:
    return YAML(typ="safe", pure=True)


_SCALARS: dict[str, Callable[[SafeConstructor, ScalarNode], Any]] = {
    _CORE + "str": SafeConstructor.construct_yaml_str,
    _CORE + "int": SafeConstructor.construct_yaml_int,
    _CORE + "float": SafeConstructor.construct_yaml_float,
    _CORE + "bool": SafeConstructor.construct_yaml_bool,
    _CORE + "null": SafeConstructor.construct_yaml_null,
    _CORE + "timestamp": SafeConstructor.construct_yaml_timestamp,
}
"""The scalar types a config may hold, each read by ruamel's own safe constructor (bound
to the document's YAML instance: ``%YAML 1.1`` changes how integers read)."""

_COLLECTIONS = {SequenceNode: _CORE + "seq", MappingNode: _CORE + "map"}
_SCALAR_ERRORS = (ValueError, KeyError, IndexError, TypeError, OverflowError, MarkedYAMLError)
"""What ruamel's scalar constructors raise for a value that does not fit its tag
(``!!int abc``, ``!!int ""``, ``!!bool maybe``, a 5,000-digit integer)."""


def parse_yaml(text: str, environ: Mapping[str, str] | None = None
               ) -> tuple[YamlDocument | None, list[SourceProblem]]:
    """The document's plain data and lines, or None and why not; never raises."""
    if len(text) > MAX_TEXT:
        return None, [SourceProblem(None, (), f"the file is larger than {MAX_TEXT // 1024**2} "
                                    "MiB, the most a config may be")]
    yaml = _yaml()
    builder = _Builder(yaml, os.environ if environ is None else environ)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for event in yaml.parse(text):
                builder.feed(event)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (exc.problem or exc.context or str(exc)).strip()
        return None, [SourceProblem(line, (), f"invalid YAML: {problem}")]
    except YAMLError as exc:
        return None, [SourceProblem(None, (), f"invalid YAML: {exc}")]
    except _Refused as exc:
        return None, [exc.problem]
    return YamlDocument(data=builder.root, lines=builder.lines), builder.problems


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels (a config needs at most 6)"


def _line(event: Any) -> int:
    return int(event.start_mark.line) + 1


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


_NO_KEY = object()
_BUILDING = object()
"""An anchor whose mapping or list is still open: an alias to it would be a cycle."""


@dataclass
class _Anchor:
    value: Any
    size: int
    key_lines: dict[Any, int] | None


@dataclass
class _Frame:
    """A mapping or list being read. For a mapping, ``key`` holds the key waiting for
    its value (``_NO_KEY`` while a key is expected)."""

    path: Path_
    value: Any
    anchor: str | None
    count_at_start: int
    line: int
    key: Any = _NO_KEY
    key_line: int = 0
    merging: bool = False
    merges: list[tuple[Any, int]] = field(default_factory=list)
    key_lines: dict[Any, int] = field(default_factory=dict)


class _Builder:
    """Plain data from parser events, in one pass with an explicit stack (no recursion).

    An alias is the anchored value again (one object, not a copy), so memory stays linear
    in the text; the values it stands for are still counted against MAX_NODES, because
    validation visits every place a value appears."""

    def __init__(self, yaml: YAML, env: Mapping[str, str]) -> None:
        self.constructor = yaml.constructor
        self.resolver = yaml.resolver
        self.env = env
        self.lines: dict[Path_, int] = {(): 1}
        self.problems: list[SourceProblem] = []
        self.root: Any = None
        self._documents = 0
        self._count = 0
        self._stack: list[_Frame] = []
        self._anchors: dict[str, _Anchor | object] = {}
        self._key_lines: dict[int, dict[Any, int]] = {}  # id(anchored mapping) -> its lines

    def feed(self, event: Any) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    # -- events ----------------------------------------------------------------------

    def _document(self, event: DocumentStartEvent) -> None:
        self._documents += 1
        if self._documents > 1:
            raise _Refused(SourceProblem(_line(event), (), "invalid YAML: expected a single "
                                         "document, found a second one (---)"))

    def _scalar_event(self, event: ScalarEvent) -> None:
        self._counted(1, event)
        tag = self._tag(event, ScalarNode, event.value)
        top = self._stack[-1] if self._stack else None
        is_key = top is not None and isinstance(top.value, dict) and top.key is _NO_KEY
        if is_key and tag == _MERGE:
            assert top is not None  # is_key says so; mypy does not carry it over
            top.merging, top.key, top.key_line = True, "<<", _line(event)
            return
        construct = _SCALARS.get(tag)
        if construct is None:
            raise self._unsupported(event, tag)
        try:
            value = construct(self.constructor, ScalarNode(tag, event.value, event.start_mark))
        except _SCALAR_ERRORS:
            self.problems.append(SourceProblem(_line(event), self._child_path(),
                                               f"cannot read {event.value[:40]!r} as "
                                               f"{_tag_name(tag)}"))
            value = None
        if isinstance(value, str) and not is_key:
            value = _expand_env(value, self._child_path(), _line(event), self)
        if event.anchor is not None:
            self._anchors[event.anchor] = _Anchor(value, 1, None)
        self._deliver(value, _line(event))

    def _alias(self, event: AliasEvent) -> None:
        anchor = self._anchors.get(event.anchor)
        if anchor is None:
            raise _Refused(SourceProblem(_line(event), self._child_path(),
                                         f"invalid YAML: unknown alias *{event.anchor}"))
        if anchor is _BUILDING:
            raise _Refused(SourceProblem(
                _line(event), self._child_path(),
                "an alias refers to a mapping or list that contains it"))
        assert isinstance(anchor, _Anchor)
        self._counted(anchor.size, event)
        self._deliver(anchor.value, _line(event))

    def _start(self, event: Any) -> None:
        is_map = isinstance(event, MappingStartEvent)
        self._counted(1, event)
        top = self._stack[-1] if self._stack else None
        if top is not None and isinstance(top.value, dict) and top.key is _NO_KEY:
            raise _Refused(SourceProblem(_line(event), top.path,
                                         "a key must be a plain value, not a mapping or list"))
        if len(self._stack) >= MAX_DEPTH:
            top_key = self._child_path()[:1]
            raise _Refused(SourceProblem(_line(event), top_key, _too_deep()))
        kind = MappingNode if is_map else SequenceNode
        tag = self._tag(event, kind, None)
        if tag != _COLLECTIONS[kind]:
            raise self._unsupported(event, tag)
        if event.anchor is not None:
            self._anchors[event.anchor] = _BUILDING
        self._stack.append(_Frame(self._child_path(), {} if is_map else [], event.anchor,
                                  self._count, _line(event)))

    def _end(self, event: Any) -> None:
        frame = self._stack.pop()
        if isinstance(frame.value, dict):
            self._merge(frame)
        if frame.anchor is not None:
            size = self._count - frame.count_at_start + 1
            key_lines = frame.key_lines if isinstance(frame.value, dict) else None
            self._anchors[frame.anchor] = _Anchor(frame.value, size, key_lines)
            if key_lines is not None:
                self._key_lines[id(frame.value)] = key_lines
        self._deliver(frame.value, frame.line)

    # -- helpers ---------------------------------------------------------------------

    def _tag(self, event: Any, kind: type, value: Any) -> str:
        tag = event.ctag
        if tag is None or str(tag) == "!":
            tag = self.resolver.resolve(kind, value, event.implicit)
        return str(tag)

    def _counted(self, values: int, event: Any) -> None:
        self._count += values
        if self._count > MAX_NODES:
            # Where the expansion happens: the top-level key being built.
            top = self._stack[1].path[:1] if len(self._stack) > 1 else self._child_path()[:1]
            raise _Refused(SourceProblem(
                self.lines.get(top, _line(event)), top, f"the document expands to more than "
                f"{MAX_NODES:,} values (aliases repeating aliases?); write the values out or "
                "use fewer aliases"))

    def _child_path(self) -> Path_:
        """The path of the value that comes next."""
        if not self._stack:
            return ()
        top = self._stack[-1]
        if isinstance(top.value, list):
            return (*top.path, len(top.value))
        return top.path if top.key is _NO_KEY or top.merging else (*top.path, top.key)

    def _unsupported(self, event: Any, tag: str) -> _Refused:
        allowed = ", ".join(_tag_name(t) for t in (*_SCALARS, *_COLLECTIONS.values()))
        return _Refused(SourceProblem(
            _line(event), self._child_path(),
            f"unsupported tag {_tag_name(tag)}: a config holds only plain YAML ({allowed})"))

    def _deliver(self, value: Any, line: int) -> None:
        """A finished value, to the mapping or list that is open (or as the document)."""
        if not self._stack:
            self.root = value
            return
        top = self._stack[-1]
        if isinstance(top.value, list):
            self.lines[(*top.path, len(top.value))] = line
            top.value.append(value)
        elif top.key is _NO_KEY:
            if isinstance(value, dict | list):
                raise _Refused(SourceProblem(line, top.path, "a key must be a plain value, "
                                             "not a mapping or list"))
            top.key, top.key_line = value, line
        elif top.merging:
            top.merges.append((value, top.key_line))
            top.key, top.merging = _NO_KEY, False
        else:
            key, top.key = top.key, _NO_KEY
            if key in top.value:
                self.problems.append(SourceProblem(
                    top.key_line, (*top.path, key),
                    f"duplicate key {key!r} (first at line {top.key_lines[key]})"))
                return
            top.value[key] = value
            top.key_lines[key] = top.key_line
            self.lines[(*top.path, key)] = top.key_line

    def _merge(self, frame: _Frame) -> None:
        """``<<`` entries: keys of the merged mappings that the mapping does not set itself;
        earlier merges win over later ones (YAML merge key rules)."""
        for merged, line in frame.merges:
            sources = merged if isinstance(merged, list) else [merged]
            for source in sources:
                if not isinstance(source, dict):
                    raise _Refused(SourceProblem(
                        line, frame.path,
                        "a merge (<<) takes a mapping or a list of mappings, e.g. <<: *common"))
                key_lines = self._key_lines.get(id(source), {})
                for key, value in source.items():
                    if key not in frame.value:
                        frame.value[key] = value
                        self.lines[(*frame.path, key)] = key_lines.get(key, line)
                        frame.key_lines[key] = key_lines.get(key, line)


_HANDLERS: dict[type, Callable[[_Builder, Any], None]] = {
    DocumentStartEvent: _Builder._document,
    ScalarEvent: _Builder._scalar_event,
    AliasEvent: _Builder._alias,
    SequenceStartEvent: _Builder._start,
    MappingStartEvent: _Builder._start,
    SequenceEndEvent: _Builder._end,
    MappingEndEvent: _Builder._end,
}


def _expand_env(text: str, path: Path_, line: int, builder: _Builder) -> str:
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in builder.env:
            return builder.env[name]
        if default is not None:
            return default
        builder.problems.append(SourceProblem(line, path,
                                              f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(replace, text)
