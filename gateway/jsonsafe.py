"""Values for JSON that strict parsers accept: no NaN, no infinities.

``json.dumps`` writes NaN and ±Infinity as the bare words ``NaN``/``Infinity`` by
default, which JavaScript's ``JSON.parse`` and most strict parsers refuse; a float
register or a shelve's ``for`` can hold one. What goes out on the ops bus and the alarm
topics passes through here first and is dumped with ``allow_nan=False``.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.reading import FieldValue


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
