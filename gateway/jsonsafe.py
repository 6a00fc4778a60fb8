"""JSON both ways without trusting it: what we write, strict parsers accept; what
devices send, we parse without an exception other than :class:`JsonRefused`.

Out: ``json.dumps`` writes NaN and ±Infinity as the bare words ``NaN``/``Infinity`` by
default, which JavaScript's ``JSON.parse`` and most strict parsers refuse; a float
register or a shelve's ``for`` can hold one. What goes out on the ops bus and the alarm
topics passes through :func:`finite` first and is dumped with ``allow_nan=False``.

In: ``json.loads`` raises ``RecursionError`` (not a ``ValueError``) for deeply nested
input such as 100,000 ``[``: a driver catching ``ValueError`` let it escape and its
task died on one bad part (found by the outside probe). :func:`parse` is the one place
device and network JSON is read: every failure is ``JsonRefused`` (a ``ValueError``), as
``gateway/xmlsafe.py`` does for XML, and a caller that walks or prints what it parsed
with recursive code (``str()`` of a list, ``repr``) can bound the nesting it accepts.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.reading import FieldValue


class JsonRefused(ValueError):
    """Not JSON we accept: malformed, not UTF-8, or nested too deep."""


def parse(data: bytes | bytearray | str, *, max_depth: int | None = None,
          **options: Any) -> Any:
    """The value in ``data`` (``options`` go to ``json.loads``); ``JsonRefused`` for
    anything else. With ``max_depth``, arrays and objects nested deeper than that are
    refused too (a device event is 3 to 5 levels deep; the check walks without
    recursion)."""
    try:
        value = json.loads(data, **options)
    except RecursionError:
        raise JsonRefused("nested too deep to parse") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise JsonRefused(str(exc)[:120]) from None
    if max_depth is not None and depth_exceeds(value, max_depth):
        raise JsonRefused(f"nested deeper than {max_depth} levels")
    return value


def depth_exceeds(value: object, limit: int) -> bool:
    """Whether arrays/objects in ``value`` nest deeper than ``limit`` (a scalar is depth
    0, ``[]`` depth 1). Iterative: the value may be as deep as the parser allowed."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level + 1 > limit:
            return True
        pending.extend((child, level + 1) for child in children)
    return False


def finite(value: object) -> object:
    """``value`` with non-finite floats as None (JSON null), inside dicts, lists and
    tuples too (a tuple becomes a list, as JSON has only lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def finite_field(value: Any) -> FieldValue | None:
    """A reading's field value, None when it is a non-finite float."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
