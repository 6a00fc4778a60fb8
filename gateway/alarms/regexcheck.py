"""Refuse rule regexes that can backtrack for ever.

Python's ``re`` has no time limit, and the engine evaluates conditions on the event loop:
``status =~ "(a+)+$"`` took 0.93 s on a 24-character value from a device, doubling with
every character (found by the outside probe of issue 12), so one crafted value from a
camera or a reader would hang the gateway, and again after every restart when the broker
redelivers it. Such patterns are refused when the rule is loaded (a config error with its
line).

What is refused: inside a repeat that may run more than once, a place where the matcher
has to guess, because the next character does not decide the way:

* a repeat inside the repeat that could either stop or go on at the same character:
  ``(a+)+``, ``(\\w+){1,10}``, ``([A-Z0-9]+\\s?){2,8}``, ``(a{1,100}){1,100}``, ``(aa?)+``;
* alternatives that can begin with the same character (or one that can match nothing
  where what follows could begin like the other): ``(a|aa)+``, ``(\\d|\\w)+``,
  ``(ab|a)+``.

Where every such choice inside a repeat is decided by the next character, the matcher
never has two ways to go on, so a failing match costs time in proportion to the value,
not exponential in it: ``(\\d{1,3}\\.){3}\\d{1,3}``, ``([A-Z]\\d?)+``, ``(\\w+\\s)+`` and
``(京|沪)[A-Z]`` are accepted. The check looks one character ahead and knows the character
classes exactly (within the Basic Multilingual Plane, case-insensitive flags included);
it may refuse a harmless pattern whose alternatives differ only later (``([0-9]x|\\dy)+``:
write ``\\d[xy]``), never the other way round. Backreferences and lookarounds inside a
repeat count as matching anything. A repeat that is not inside another one (``\\d+\\d+$``)
costs at most a power of the value's length, which the engine bounds
(:data:`gateway.alarms.expr.REGEX_INPUT_MAX`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from functools import cache
from typing import Any

# The stdlib's own regex parser (Python 3.11+), which typeshed does not describe.
_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

_REPEATS = frozenset({_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT})
_BMP = 0x10000
_ASTRAL = 1 << _BMP
"""One bit for every character outside the BMP (a class reaching there sets it)."""
_ALL = (1 << (_BMP + 1)) - 1

_CATEGORIES = {
    _c.CATEGORY_DIGIT: (r"\d", False), _c.CATEGORY_NOT_DIGIT: (r"\d", True),
    _c.CATEGORY_SPACE: (r"\s", False), _c.CATEGORY_NOT_SPACE: (r"\s", True),
    _c.CATEGORY_WORD: (r"\w", False), _c.CATEGORY_NOT_WORD: (r"\w", True),
    _c.CATEGORY_LINEBREAK: (r"\n", False), _c.CATEGORY_NOT_LINEBREAK: (r"\n", True),
}

NESTED = ("repeats a repeat that can stop or go on at the same character (like (a+)+ or "
          "(a{1,100}){1,100}): on some device values it backtracks for seconds and stops "
          "the gateway; write it so the next character decides (a+ instead of (a+)+, "
          "(\\w+\\s)+ instead of (\\w+\\s?)+)")
OVERLAP = ("has alternatives that can begin with the same character inside a repeat (like "
           "(a|aa)+ or (\\d|\\w)+): on some device values it backtracks for seconds and stops "
           "the gateway; write them so each begins differently (a+ instead of (a|aa)+)")
TOO_DEEP = "is nested too deeply to be checked"


def backtracking_risk(pattern: str, flags: int = 0) -> str | None:
    """Why ``pattern`` can backtrack exponentially (one of :data:`NESTED`,
    :data:`OVERLAP`, :data:`TOO_DEEP`), or None when it cannot. A pattern that is not a
    regex is None: rule-engine reports it itself."""
    try:
        parsed = _parser.parse(pattern, flags)
    except re.error:
        return None
    except RecursionError:
        return TOO_DEEP
    try:
        return _Checker(bool(parsed.state.flags & re.IGNORECASE)).walk(
            list(parsed), follow=0, in_loop=False)
    except RecursionError:
        return TOO_DEEP


class _Checker:
    """One pattern's walk: first-character sets as bit masks over the BMP (bit i is
    character i, one more bit for everything beyond), whether a part can match nothing,
    and the one-character-lookahead conflicts inside repeats."""

    def __init__(self, ignorecase: bool) -> None:
        self.ignorecase = ignorecase

    # -- the conflicts -----------------------------------------------------------------

    def walk(self, items: Sequence[tuple[Any, Any]], follow: int, in_loop: bool) -> str | None:
        """Check a sequence; ``follow`` is what may begin right after it."""
        after = self._suffixes(items, follow)
        for index, (op, arg) in enumerate(items):
            found = self._item(op, arg, after[index + 1], in_loop)
            if found is not None:
                return found
        return None

    def _item(self, op: Any, arg: Any, follow: int, in_loop: bool) -> str | None:
        if op in _REPEATS:
            low, high, body = arg
            body = list(body)
            begins, _ = self.first(body)
            if in_loop and low != high and begins & follow:
                return NESTED  # another round or what follows: the next char cannot tell
            looping = high > 1
            inner = follow | (begins if looping else 0)
            return self.walk(body, inner, in_loop or looping)
        if op is _c.BRANCH:
            alternatives = [list(a) for a in arg[1]]
            return self._choice(alternatives, follow, in_loop)
        if op is _c.GROUPREF_EXISTS:
            _group, yes, no = arg
            alternatives = [list(yes), list(no) if no is not None else []]
            return self._choice(alternatives, follow, in_loop)
        if op is _c.SUBPATTERN:
            return self._scoped(arg[1], arg[2], list(arg[3]), follow, in_loop)
        if op is _c.ATOMIC_GROUP:
            return self.walk(list(arg), follow, in_loop)
        if op in (_c.ASSERT, _c.ASSERT_NOT):
            return self.walk(list(arg[1]), _ALL, in_loop)
        return None

    def _choice(self, alternatives: list[list[tuple[Any, Any]]], follow: int,
                in_loop: bool) -> str | None:
        if in_loop:
            seen = 0
            for alternative in alternatives:
                begins, empty = self.first(alternative)
                if empty:
                    begins |= follow
                if begins & seen:
                    return OVERLAP
                seen |= begins
        for alternative in alternatives:
            found = self.walk(alternative, follow, in_loop)
            if found is not None:
                return found
        return None

    def _scoped(self, add: int, remove: int, body: list[tuple[Any, Any]], follow: int,
                in_loop: bool) -> str | None:
        saved = self.ignorecase
        if add & re.IGNORECASE:
            self.ignorecase = True
        if remove & re.IGNORECASE:
            self.ignorecase = False
        try:
            return self.walk(body, follow, in_loop)
        finally:
            self.ignorecase = saved

    # -- first characters --------------------------------------------------------------

    def _suffixes(self, items: Sequence[tuple[Any, Any]], follow: int) -> list[int]:
        """``out[i]``: what may begin at ``items[i:]`` followed by ``follow``."""
        out = [follow] * (len(items) + 1)
        for index in range(len(items) - 1, -1, -1):
            begins, empty = self._first_item(*items[index])
            out[index] = begins | (out[index + 1] if empty else 0)
        return out

    def first(self, items: Sequence[tuple[Any, Any]]) -> tuple[int, bool]:
        """(the characters a match of ``items`` may begin with, whether it may be empty)."""
        mask = 0
        for op, arg in items:
            begins, empty = self._first_item(op, arg)
            mask |= begins
            if not empty:
                return mask, False
        return mask, True

    def _first_item(self, op: Any, arg: Any) -> tuple[int, bool]:
        if op is _c.LITERAL:
            return self._literal(arg), False
        if op is _c.NOT_LITERAL:
            return _ALL & ~self._literal(arg), False
        if op is _c.ANY:
            return _ALL, False
        if op is _c.IN:
            return self._cased(self._in(arg)), False
        if op in _REPEATS:
            low, _high, body = arg
            begins, empty = self.first(list(body))
            return begins, empty or low == 0
        if op is _c.SUBPATTERN:
            saved = self.ignorecase
            self.ignorecase = (saved or bool(arg[1] & re.IGNORECASE)) \
                and not arg[2] & re.IGNORECASE
            try:
                return self.first(list(arg[3]))
            finally:
                self.ignorecase = saved
        if op is _c.ATOMIC_GROUP:
            return self.first(list(arg))
        if op is _c.BRANCH:
            mask, empty = 0, False
            for alternative in arg[1]:
                begins, nothing = self.first(list(alternative))
                mask |= begins
                empty = empty or nothing
            return mask, empty
        if op is _c.GROUPREF_EXISTS:
            yes, no = self.first(list(arg[1])), self.first(list(arg[2] or []))
            return yes[0] | no[0], yes[1] or no[1]
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            return 0, True  # zero width
        return _ALL, True  # a backreference, anything unknown: may be anything

    def _in(self, items: Sequence[tuple[Any, Any]]) -> int:
        mask, negate = 0, False
        for op, arg in items:
            if op is _c.NEGATE:
                negate = True
            elif op is _c.LITERAL:
                mask |= _bit(arg)
            elif op is _c.RANGE:
                low, high = arg
                mask |= _span(low, high)
            elif op is _c.CATEGORY and arg in _CATEGORIES:
                mask |= _category(*_CATEGORIES[arg])
            else:
                return _ALL
        return (_ALL & ~mask) | _ASTRAL if negate else mask

    def _literal(self, code: int) -> int:
        mask = _bit(code)
        if self.ignorecase:
            mask |= _case_pairs().get(code, 0)
        return mask

    def _cased(self, mask: int) -> int:
        """With IGNORECASE, a class also matches the other cases of its characters."""
        if not self.ignorecase or not mask & _cased_mask():
            return mask
        bits = mask.to_bytes(_BMP // 8 + 1, "little")
        for code, others in _case_pairs().items():
            if bits[code >> 3] >> (code & 7) & 1:
                mask |= others
        return mask


def _bit(code: int) -> int:
    return 1 << min(code, _BMP)


def _span(low: int, high: int) -> int:
    mask = ((1 << (min(high, _BMP - 1) + 1)) - 1) & ~((1 << min(low, _BMP)) - 1)
    return mask | (_ASTRAL if high >= _BMP else 0)


@cache
def _bmp() -> str:
    return "".join(chr(code) for code in range(_BMP) if not 0xD800 <= code <= 0xDFFF)


@cache
def _category(regex: str, negated: bool) -> int:
    """The BMP characters of ``\\d``, ``\\s``, ``\\w`` (or their negation), Unicode
    meaning (the ASCII flag only narrows them). Digits and letters exist beyond the BMP
    (U+1D7CE, U+10400), white space and line breaks do not."""
    bits = bytearray(_BMP // 8 + 1)
    for match in re.finditer(regex, _bmp()):
        code = ord(match.group())
        bits[code >> 3] |= 1 << (code & 7)
    mask = int.from_bytes(bytes(bits), "little")
    beyond = _ASTRAL if negated or regex in (r"\d", r"\w") else 0
    return ((_ALL & ~mask) if negated else mask) | beyond


@cache
def _case_pairs() -> dict[int, int]:
    """Every BMP character that has other cases -> the mask of those (both ways: ``K``
    has ``k``, ``k`` has ``K`` and the Kelvin sign)."""
    pairs: dict[int, int] = {}
    for code in range(_BMP):
        char = chr(code)
        for other in (char.lower(), char.upper(), char.casefold(), char.swapcase()):
            if len(other) == 1 and other != char and ord(other) < _BMP:
                pairs[code] = pairs.get(code, 0) | _bit(ord(other))
                pairs[ord(other)] = pairs.get(ord(other), 0) | _bit(code)
    return pairs


@cache
def _cased_mask() -> int:
    mask = 0
    for code in _case_pairs():
        mask |= _bit(code)
    return mask
