"""Refuse rule regexes that can backtrack for ever.

Python's ``re`` has no time limit, and the engine evaluates conditions on the event loop:
``status =~ "(a+)+$"`` took 0.93 s on a 24-character value from a device, doubling with
every character (found by the outside probe of issue 12), so one crafted value from a
camera or a reader would hang the gateway. The classic cause is a repeat inside a repeat
that can match the same text in many ways; such patterns are refused when the rule is
loaded (a config error with its line), which costs an installer one rewrite
(``(a+)+`` is ``a+``) and keeps the loop safe. It checks that one shape: it may refuse a
harmless nesting, and it does not see overlapping alternatives (``(a|aa)+``), the rarer
cause, which an installer writing a plate or card pattern has no reason to write.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# The stdlib's own regex parser (Python 3.11+), which typeshed does not describe.
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

_REPEATS = frozenset({_constants.MAX_REPEAT, _constants.MIN_REPEAT})
_UNBOUNDED = _constants.MAXREPEAT


def nested_repeat(pattern: str) -> bool:
    """True when ``pattern`` has an unbounded repeat around a part that itself repeats
    (``(a+)+``, ``(a*b?)*``, ``(\\w+\\s?)*$``): the shape that backtracks exponentially."""
    try:
        parsed = _parser.parse(pattern)
    except re.error:
        return False  # not a regex: rule-engine reports it itself
    return _has_nested(list(parsed), inside_unbounded=False)


def _has_nested(items: list[tuple[Any, Any]], *, inside_unbounded: bool) -> bool:
    for op, arg in items:
        if op in _REPEATS:
            _low, high, sub = arg
            if inside_unbounded and high > 1:
                return True
            if _has_nested(list(sub), inside_unbounded=inside_unbounded or high == _UNBOUNDED):
                return True
        elif op is _constants.SUBPATTERN:
            if _has_nested(list(arg[-1]), inside_unbounded=inside_unbounded):
                return True
        elif op is _constants.BRANCH:
            if any(_has_nested(list(branch), inside_unbounded=inside_unbounded)
                   for branch in arg[1]):
                return True
        elif op in (_constants.ASSERT, _constants.ASSERT_NOT):
            if _has_nested(list(arg[1]), inside_unbounded=inside_unbounded):
                return True
    return False
