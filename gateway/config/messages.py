"""Turn pydantic's error records into one-line messages an installer can act on.

A table keyed by pydantic's error ``type`` instead of an if/elif chain; anything not in
the table keeps pydantic's own wording plus the offending value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.urls import redact_text

ErrorDetails = dict[str, Any]

NAMES_SHOWN = 10
"""Names listed in one error line; the rest are counted (one line per bad device, each
listing 500 names, was quadratic)."""


def listed_names(names: list[str], render: Callable[[str], str] = str) -> str:
    """At most ``NAMES_SHOWN`` of ``names``, each through ``render``, then "and N more"."""
    shown = ", ".join(render(name) for name in names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _got(err: ErrorDetails) -> str:
    value = err.get("input")
    if isinstance(value, dict | list):
        return ""
    if isinstance(value, str):
        value = redact_text(value)
    return f", got {value!r}"


def _bound(word: str, key: str) -> Callable[[ErrorDetails], str]:
    return lambda e: f"must be {word} {e['ctx'][key]}{_got(e)}"


_MESSAGES: dict[str, Callable[[ErrorDetails], str]] = {
    "missing": lambda e: "required key is missing",
    "extra_forbidden": lambda e: "unknown key (check the spelling)",
    "greater_than_equal": _bound(">=", "ge"),
    "greater_than": _bound(">", "gt"),
    "less_than_equal": _bound("<=", "le"),
    "less_than": _bound("<", "lt"),
    "literal_error": lambda e: f"must be one of {e['ctx']['expected']}{_got(e)}",
    "string_pattern_mismatch": lambda e: (
        f"must match {e['ctx']['pattern']}{_got(e)}"),
    "string_too_long": lambda e: f"must be at most {e['ctx']['max_length']} characters",
    "value_error": lambda e: str(e["ctx"]["error"]),
    "assertion_error": lambda e: str(e["ctx"]["error"]),
    "union_tag_invalid": lambda e: (
        f"unknown {e['ctx']['discriminator'].strip(chr(39))} {e['ctx']['tag']!r}; "
        f"expected one of {e['ctx']['expected_tags']}"),
    "union_tag_not_found": lambda e: (
        f"needs a {e['ctx']['discriminator'].strip(chr(39))} key"),
    "int_parsing": lambda e: f"must be an integer{_got(e)}",
    "int_type": lambda e: f"must be an integer{_got(e)}",
    "int_from_float": lambda e: f"must be a whole number{_got(e)}",
    "float_parsing": lambda e: f"must be a number{_got(e)}",
    "float_type": lambda e: f"must be a number{_got(e)}",
    "finite_number": lambda e: f"must be a finite number{_got(e)}",
    "bool_parsing": lambda e: f"must be true or false{_got(e)}",
    "bool_type": lambda e: f"must be true or false{_got(e)}",
    "string_type": lambda e: f"must be a string{_got(e)}",
    "dict_type": lambda e: f"must be a mapping (key: value){_got(e)}",
    "model_type": lambda e: f"must be a mapping (key: value){_got(e)}",
    "model_attributes_type": lambda e: f"must be a mapping (key: value){_got(e)}",
    "list_type": lambda e: f"must be a list{_got(e)}",
}


def describe(err: ErrorDetails) -> str:
    render = _MESSAGES.get(err["type"])
    if render is not None:
        try:
            return render(err)
        except (KeyError, TypeError):
            pass
    return f"{err['msg']}{_got(err)}"
