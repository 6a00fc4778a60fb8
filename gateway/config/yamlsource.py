"""YAML parsing that remembers where every value came from.

The only module that imports ruamel.yaml. It returns plain dicts/lists (what pydantic
wants) plus a map from each value's path to its line, so every error can point the
installer at the line to fix. ``${VAR}`` / ``${VAR:-default}`` are expanded here, where
the line of a missing variable is still known.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

Path_ = tuple[str | int, ...]

_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


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


def parse_yaml(text: str, environ: Mapping[str, str] | None = None
               ) -> tuple[YamlDocument | None, list[SourceProblem]]:
    env = os.environ if environ is None else environ
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = (exc.problem or exc.context or str(exc)).strip()
        return None, [SourceProblem(line, (), f"invalid YAML: {problem}")]
    except YAMLError as exc:
        return None, [SourceProblem(None, (), f"invalid YAML: {exc}")]
    doc = YamlDocument(data=None, lines={(): 1})
    problems: list[SourceProblem] = []
    doc.data = _plain(root, (), doc, problems, env)
    return doc, problems


def _plain(node: Any, path: Path_, doc: YamlDocument, problems: list[SourceProblem],
           env: Mapping[str, str]) -> Any:
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            key_line, _ = node.lc.key(key)
            child = (*path, key)
            doc.lines[child] = key_line + 1
            out[key] = _plain(value, child, doc, problems, env)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            line, _ = node.lc.item(index)
            doc.lines[(*path, index)] = line + 1
            items.append(_plain(value, (*path, index), doc, problems, env))
        return items
    if isinstance(node, str):
        return _expand_env(str(node), path, doc, problems, env)
    return node


def _expand_env(text: str, path: Path_, doc: YamlDocument, problems: list[SourceProblem],
                env: Mapping[str, str]) -> str:
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(SourceProblem(doc.line_of(path), path,
                                      f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(replace, text)
