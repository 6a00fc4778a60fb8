"""A small JSON path syntax for picking values out of payloads: the MQTT driver's
mappings and the HTTP push receiver's ``generic-json`` profile share it (one grammar
for installers to learn; here in the core so neither driver imports the other).

Grammar (documented in docs/mqtt.md)::

    $                      the whole payload (a number, a string, or the JSON document)
    $.after.label          object keys
    $.zones[0]             list index (negative counts from the end)
    $['key.with.dots']     quoted key, for keys with dots, spaces or brackets

No wildcards, filters or recursion: a path names exactly one value or nothing, so a
mapping is predictable and cheap (a tuple of steps walked with dict/list indexing).
"""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\[(['"])(.*?)\3\]""")
MISSING = object()


def compile_path(path: str) -> tuple[str | int, ...]:
    """``$.a[0]['b.c']`` -> ("a", 0, "b.c"); ValueError naming the bad spot otherwise."""
    text = path.strip()
    if not text.startswith("$"):
        raise ValueError(f"path {path!r} must start with $ (e.g. $.after.label)")
    steps: list[str | int] = []
    pos = 1
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise ValueError(f"path {path!r}: cannot read {text[pos:]!r} (use .key, [0] or "
                             "['quoted key'])")
        name, index, _, quoted = match.groups()
        steps.append(int(index) if index is not None else (name if name is not None else quoted))
        pos = match.end()
    return tuple(steps)


def resolve(document: Any, steps: tuple[str | int, ...]) -> Any:
    """The value at ``steps``, or MISSING (a wrong type on the way counts as missing)."""
    value = document
    for step in steps:
        if isinstance(step, str):
            if type(value) is not dict:
                return MISSING
            value = value.get(step, MISSING)
            if value is MISSING:
                return MISSING
        else:
            if type(value) is not list:
                return MISSING
            try:
                value = value[step]
            except IndexError:
                return MISSING
    return value
