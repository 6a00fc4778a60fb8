"""YAML parsing that remembers where every value came from, and refuses hostile input.

The only module that imports ruamel.yaml. It returns plain dicts/lists (what pydantic
wants) plus a map from each value's path to its line, so every error can point the
installer at the line to fix. ``${VAR}`` / ``${VAR:-default}`` are expanded here, where
the line of a missing variable is still known.

A config file is read on SIGHUP by a running gateway and by ``iotgw check`` in a unit's
``ExecStartPre``, so no file may crash either: everything wrong with a document comes
back as a :class:`SourceProblem`. ruamel composes the document into a node graph (an
alias is the same node object again, so composing is linear in the text) with its depth
bounded; this module then builds the plain data itself, which is where the other limits
live:

* only the standard YAML types are read (``!!python/...`` and local tags are refused);
* nesting deeper than :data:`MAX_DEPTH` is refused, also when aliases build it;
* aliases and merge keys (``<<: *common``) work, but the document may expand to at most
  :data:`MAX_NODES` values, so an alias bomb stops after that many steps, in bounded
  memory, with the line of the alias that crossed the limit;
* the text may be at most :data:`MAX_TEXT` characters (the loader checks the file size
  before reading it; profiles pass through here too).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import MaxDepthExceededError
from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path_ = tuple[str | int, ...]

MAX_BYTES = 4 * 1024 * 1024
"""Largest config file read (4 MiB). A compound of 2,000 devices written out in full is
about 300 KiB; 4 MiB holds ~25,000 (checked in ~20 s on a 2.4 GHz core): anything larger
is a generated file gone wrong, and parsing it would cost a Pi minutes and gigabytes."""

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
    yaml = YAML(typ="safe", pure=True)
    yaml.max_depth = MAX_DEPTH
    return yaml


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
_SCALAR_ERRORS = (ValueError, KeyError, TypeError, OverflowError, MarkedYAMLError)
"""What ruamel's scalar constructors raise for a value that does not fit its tag
(``!!int abc``, ``!!bool maybe``, a 5,000-digit integer)."""


def parse_yaml(text: str, environ: Mapping[str, str] | None = None
               ) -> tuple[YamlDocument | None, list[SourceProblem]]:
    """The document's plain data and lines, or None and why not; never raises."""
    if len(text) > MAX_TEXT:
        return None, [SourceProblem(None, (), f"the file is larger than {MAX_TEXT // 1024**2} "
                                    "MiB, the most a config may be")]
    yaml = _yaml()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a reused anchor name is legal YAML
            root = yaml.compose(text)
    except MaxDepthExceededError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        return None, [SourceProblem(line, (), _too_deep())]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (exc.problem or exc.context or str(exc)).strip()
        return None, [SourceProblem(line, (), f"invalid YAML: {problem}")]
    except YAMLError as exc:
        return None, [SourceProblem(None, (), f"invalid YAML: {exc}")]
    builder = _Builder(yaml.constructor, os.environ if environ is None else environ)
    try:
        data = None if root is None else builder.value(root, (), 0)
    except _Refused as exc:
        return None, [exc.problem]
    return YamlDocument(data=data, lines=builder.lines), builder.problems


def _too_deep() -> str:
    return f"nested deeper than {MAX_DEPTH} levels (a config needs at most 6)"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _tag_name(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


class _Builder:
    """Walks the node graph once per place a node appears (aliases expand), counting."""

    def __init__(self, constructor: SafeConstructor, env: Mapping[str, str]) -> None:
        self.constructor = constructor
        self.env = env
        self.lines: dict[Path_, int] = {(): 1}
        self.problems: list[SourceProblem] = []
        self._count = 0
        self._open: set[int] = set()  # collections being built: an alias back is a cycle

    def value(self, node: Node, path: Path_, depth: int) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            # Where the expansion happens, not where the aliased node was written: the
            # top-level key being built (an alias keeps only its anchor's position).
            top = path[:1]
            raise _Refused(SourceProblem(
                self.lines.get(top, 1), top, f"the document expands to more than "
                f"{MAX_NODES:,} values (aliases repeating aliases?); write the values out or "
                "use fewer aliases"))
        if depth > MAX_DEPTH:
            raise _Refused(SourceProblem(_line(node), path, _too_deep()))
        tag = str(node.tag)
        if isinstance(node, ScalarNode):
            return self._scalar(node, tag, path)
        if _COLLECTIONS.get(type(node)) != tag:
            raise self._unsupported(node, tag, path)
        if id(node) in self._open:
            raise _Refused(SourceProblem(_line(node), path,
                                         "an alias refers to a mapping or list that contains it"))
        self._open.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self._sequence(node, path, depth)
            out: dict[Any, Any] = {}
            self._fill(out, node, path, depth, merged=False)
            return out
        finally:
            self._open.discard(id(node))

    def _unsupported(self, node: Node, tag: str, path: Path_) -> _Refused:
        allowed = ", ".join(_tag_name(t) for t in (*_SCALARS, *_COLLECTIONS.values()))
        return _Refused(SourceProblem(
            _line(node), path,
            f"unsupported tag {_tag_name(tag)}: a config holds only plain YAML ({allowed})"))

    def _scalar(self, node: ScalarNode, tag: str, path: Path_, expand: bool = True) -> Any:
        construct = _SCALARS.get(tag)
        if construct is None:
            raise self._unsupported(node, tag, path)
        try:
            value = construct(self.constructor, node)
        except _SCALAR_ERRORS:
            self.problems.append(SourceProblem(
                _line(node), path, f"cannot read {node.value[:40]!r} as {_tag_name(tag)}"))
            return None
        if expand and isinstance(value, str):
            return _expand_env(value, path, self)
        return value

    def _sequence(self, node: SequenceNode, path: Path_, depth: int) -> list[Any]:
        items = []
        for index, child in enumerate(node.value):
            self.lines[(*path, index)] = _line(child)
            items.append(self.value(child, (*path, index), depth + 1))
        return items

    def _fill(self, out: dict[Any, Any], node: MappingNode, path: Path_, depth: int,
              merged: bool) -> None:
        """Entries of ``node`` into ``out``; merged mappings (``<<``) only add keys that are
        not there yet, so the mapping's own keys win and earlier merges beat later ones."""
        merges: list[Node] = []
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if str(key_node.tag) == _MERGE:
                merges.append(value_node)
                continue
            key = self._key(key_node, path)
            if key in out:
                if not merged and key in first_line:
                    self.problems.append(SourceProblem(
                        _line(key_node), (*path, key),
                        f"duplicate key {key!r} (first at line {first_line[key]})"))
                continue
            first_line[key] = _line(key_node)
            self.lines[(*path, key)] = _line(key_node)
            out[key] = self.value(value_node, (*path, key), depth + 1)
        for source in self._merge_sources(merges, path):
            if id(source) in self._open:
                raise _Refused(SourceProblem(_line(source), path,
                                             "a merge (<<) refers to the mapping it is in"))
            self._count += 1
            self._open.add(id(source))
            try:
                self._fill(out, source, path, depth, merged=True)
            finally:
                self._open.discard(id(source))

    def _merge_sources(self, merges: list[Node], path: Path_) -> Iterator[MappingNode]:
        for merge in merges:
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode) or str(source.tag) != _CORE + "map":
                    raise _Refused(SourceProblem(
                        _line(source), path,
                        "a merge (<<) takes a mapping or a list of mappings, e.g. <<: *common"))
                yield source

    def _key(self, node: Node, path: Path_) -> Any:
        if not isinstance(node, ScalarNode):
            raise _Refused(SourceProblem(_line(node), path,
                                         "a key must be a plain value, not a mapping or list"))
        self._count += 1
        return self._scalar(node, str(node.tag), path, expand=False)


def _expand_env(text: str, path: Path_, builder: _Builder) -> str:
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
        builder.problems.append(SourceProblem(builder.lines.get(path), path,
                                              f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(replace, text)
