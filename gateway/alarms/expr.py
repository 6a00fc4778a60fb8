"""Rule conditions: the one module that imports ``rule_engine`` (PyPI ``rule-engine``).

Why rule-engine: its own small grammar (no Python ``eval``, no attribute access to Python
objects), typed contexts checked when a rule is compiled (unknown names, ``"x" > 1``), and
it is maintained. Its errors are turned into :class:`ExpressionError` (at load: a config
error with the rule's line) and :class:`RuleRuntimeError` (while running: counted and
logged once per kind by the engine, never raised further).

Speed: rule-engine walks its syntax tree with Decimal arithmetic, about 11 µs for
``voltage_l1 > 220`` on one x86 core. Most alarm conditions are comparisons of fields with
constants joined by ``and``/``or``; those are translated once into Python closures over the
same tree (about 0.3 µs), with the same meaning: a missing name or a comparison of
mismatched types is a run-time error, never a silent False. Anything else (regexes,
arithmetic, datetimes, attributes) is evaluated by rule-engine itself.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from types import ModuleType
from typing import Any, Literal

from gateway.alarms.regexcheck import backtracking_risk
from gateway.errors import GatewayError

FieldKind = Literal["number", "bool", "string", "list", "any"]
"""What a name holds, as far as a driver or the engine can tell."""

_KIND_TYPE_NAMES: dict[str, str] = {
    "number": "FLOAT", "bool": "BOOLEAN", "string": "STRING", "list": "SET", "any": "UNDEFINED",
}
"""Our field kinds as rule-engine ``DataType`` attribute names."""


@cache
def _rule_engine() -> tuple[ModuleType, ModuleType, ModuleType]:
    """rule-engine, its syntax tree and its errors, imported when the first expression is
    compiled: with its vendored ply and python-dateutil it is ~5 MiB and 45 modules, which
    every gateway paid at config load even with no rules (the config models import this
    module)."""
    import rule_engine
    import rule_engine.ast
    import rule_engine.errors

    return rule_engine, rule_engine.ast, rule_engine.errors

Values = Mapping[str, Any]

REGEX_INPUT_MAX = 256
"""A rule's regex sees at most this many characters of a value (the first ones). Patterns
that backtrack exponentially are refused at load (:mod:`gateway.alarms.regexcheck`), but
one that is merely polynomial, ``.*a.*b.*c$`` with ``=~~``, took 14.5 s on a 1,024
character value and ``\\d+\\d+$`` 2.3 s (an MQTT value may be 256 KiB): at 256
characters they take 0.09 s and 0.05 s. Plates, card numbers, event and status words are
far shorter."""


def _shown(text: str, limit: int = 120) -> str:
    """An expression as quoted in an error or log line: a generated 300 KB condition was
    echoed whole into every message (and every log line of a rule that fails at run time)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} chars)"

class ExpressionError(GatewayError):
    """An expression that cannot be compiled (syntax, unknown name, type mismatch)."""

    retryable = False


class RuleRuntimeError(GatewayError):
    """A condition that could not be evaluated for one reading (missing name, wrong type).

    ``kind`` is short and stable (``missing:voltage``, ``type``) so the engine counts and
    logs it once per rule and kind."""

    retryable = False

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Threshold:
    """``FIELD OP NUMBER``: what ``deadband`` needs to derive its clear condition."""

    field: str
    op: str
    value: float


class Expression:
    """A compiled condition. Call it with the names it uses; returns its value."""

    __slots__ = ("_fast", "_rule", "names", "text", "threshold")

    def __init__(self, text: str, rule: Any, names: frozenset[str],
                 fast: Callable[[Values], Any] | None, threshold: Threshold | None) -> None:
        self.text = text
        self._rule = rule
        self._fast = fast
        self.names = names
        """Every symbol the expression reads (fields, tags, engine-provided names)."""
        self.threshold = threshold

    def __call__(self, values: Values) -> Any:
        fast = self._fast
        if fast is not None:
            try:
                return fast(values)
            except KeyError as exc:
                raise RuleRuntimeError(f"missing:{exc.args[0]}",
                                       f"no value named {exc.args[0]!r}") from None
            except TypeError:
                raise RuleRuntimeError("type", "values of mismatched types compared "
                                       f"in {_shown(self.text)}") from None
        rerrors = _rule_engine()[2]
        try:
            result = self._rule.evaluate(values)
        except rerrors.SymbolResolutionError as exc:
            raise RuleRuntimeError(f"missing:{exc.symbol_name}",
                                   f"no value named {exc.symbol_name!r}") from None
        except rerrors.EngineError as exc:
            raise RuleRuntimeError("type", f"{exc.message} in {_shown(self.text)}") from None
        if isinstance(result, Decimal):
            return float(result)
        return result

    def truth(self, values: Values) -> bool:
        """The value as a condition: a non-boolean result is a run-time error."""
        result = self(values)
        if result is True or result is False:
            return result
        raise RuleRuntimeError("not_bool", f"{_shown(self.text)} gave {type(result).__name__}, "
                               "not true/false")


def compile_expression(text: str, kinds: Mapping[str, FieldKind] | None = None) -> Expression:
    """Compile ``text``; with ``kinds`` every name must be one of them and types must agree.

    Raises :class:`ExpressionError` with rule-engine's reason."""
    rule_engine, _, rerrors = _rule_engine()
    try:
        if kinds is None:
            context = rule_engine.Context(default_value=None)
        else:
            resolver = rule_engine.type_resolver_from_dict(
                {name: getattr(rule_engine.DataType, _KIND_TYPE_NAMES[kind])
                 for name, kind in kinds.items()})
            context = rule_engine.Context(type_resolver=resolver)
        rule = rule_engine.Rule(text, context=context)
    except rerrors.RuleSyntaxError as exc:
        where = f" at {exc.token.value!r}" if exc.token is not None else " at the end"
        raise ExpressionError(f"syntax error{where}: {_shown(text)}") from None
    except rerrors.SymbolResolutionError as exc:
        known = ", ".join(sorted(kinds or ())[:20])
        raise ExpressionError(f"unknown name {exc.symbol_name!r}"
                              + (f" (known here: {known})" if known else "")) from None
    except rerrors.EngineError as exc:
        raise ExpressionError(f"{exc.message}: {_shown(text)}") from None
    except (RecursionError, ValueError, TypeError) as exc:  # absurd nesting, bad literal
        raise ExpressionError(f"cannot compile {_shown(text)}: {type(exc).__name__}") from None
    if kinds is None:
        # Compiled without a context the rule resolves missing names to None silently;
        # recompile with the strict default so run-time misses raise.
        rule = rule_engine.Rule(text)
    tree = rule.statement.expression
    _check_regexes(tree)
    _check_boolean(tree, text)
    names = frozenset(_symbols(tree))
    fast = _fast(tree)
    if fast is None:
        _bound_regexes(tree)
    # Where the closures cover the whole expression the rule-engine object (about 14 KiB
    # with its tree) is not kept: 1,000 rules would cost 14 MiB for nothing.
    return Expression(text, None if fast is not None else rule, names, fast, _threshold(tree))


def _check_regexes(tree: Any) -> None:
    """Refuse a regex that can backtrack exponentially, and a pattern that is not a
    quoted string: one taken from a reading (``code =~ pattern``) would be a device's
    regex, which nothing checks."""
    ast = _rule_engine()[1]
    for node in _nodes(tree):
        if not isinstance(node, ast.FuzzyComparisonExpression):
            continue
        if not isinstance(node.right, ast.StringExpression):
            raise ExpressionError("the pattern of =~, =~~, !~ and !~~ must be a quoted string "
                                  "(a pattern from a reading cannot be checked)")
        pattern = node.right.value
        reason = backtracking_risk(pattern, node.context.regex_flags)
        if reason is not None:
            raise ExpressionError(f"regex {_shown(pattern, 60)} {reason}")


def _check_boolean(tree: Any, text: str) -> None:
    """A condition must be true or false: ``$re_groups``, ``f0 + 1`` on a number field or
    a bare string field passed the load and made every reading a rule error at run time.
    rule-engine knows the result type of an expression where its names' types are known
    (literals, operators, builtins; fields with ``kinds``); an unknown one is checked
    when it is evaluated (:meth:`Expression.truth`)."""
    rule_engine = _rule_engine()[0]
    result = tree.result_type
    if not rule_engine.DataType.is_compatible(result, rule_engine.DataType.BOOLEAN):
        raise ExpressionError(f"{_shown(text)} gives {result.name}, not true or false: "
                              "a condition compares (f0 > 1, code == \"x\", door_open)")


class _BoundedRegex:
    """A rule's compiled regex, seeing at most :data:`REGEX_INPUT_MAX` characters of a
    value. It stands in for rule-engine's compiled pattern, which is only ever asked to
    ``match`` or ``search`` a string."""

    __slots__ = ("_pattern",)

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern

    def match(self, value: str) -> re.Match[str] | None:
        return self._pattern.match(value[:REGEX_INPUT_MAX])

    def search(self, value: str) -> re.Match[str] | None:
        return self._pattern.search(value[:REGEX_INPUT_MAX])


def _bound_regexes(tree: Any) -> None:
    """Every constant pattern in ``tree`` sees at most REGEX_INPUT_MAX characters."""
    ast = _rule_engine()[1]
    for node in _nodes(tree):
        if isinstance(node, ast.FuzzyComparisonExpression) and isinstance(
                getattr(node, "_right", None), re.Pattern):
            node._right = _BoundedRegex(node._right)


def reference_value(text: str, values: Values) -> Any:
    """``text`` evaluated by rule-engine alone (no closures): what the fast path must
    agree with (tests, ``iotgw rules test`` debugging)."""
    result = _rule_engine()[0].Rule(text).evaluate(values)
    return float(result) if isinstance(result, Decimal) else result


def check_kinds(expression: Expression, kinds: Mapping[str, FieldKind]) -> None:
    """Compile again against ``kinds`` (one device's names) to find unknown names and type
    mismatches; raises :class:`ExpressionError`."""
    compile_expression(expression.text, kinds)


def _nodes(node: Any) -> list[Any]:
    ast = _rule_engine()[1]
    out: list[Any] = []
    stack = [node]
    while stack:
        current = stack.pop()
        out.append(current)
        for attr in _CHILDREN:
            child = getattr(current, attr, None)
            if isinstance(child, ast.ExpressionBase):
                stack.append(child)
        items = getattr(current, "value", None)
        if isinstance(items, tuple | list):
            stack.extend(i for i in items if isinstance(i, ast.ExpressionBase))
    return out


_CHILDREN = ("left", "right", "expression", "container", "member", "condition",
             "case_true", "case_false", "object", "item", "start", "stop")


def _symbols(node: Any) -> list[str]:
    ast = _rule_engine()[1]
    return [n.name for n in _nodes(node)
            if isinstance(n, ast.SymbolExpression) and n.scope is None]


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
}
_EQUALITY: dict[str, Callable[[Any, Any], bool]] = {"eq": operator.eq, "ne": operator.ne}


def _number(value: Any) -> float:
    """Numbers only: a bool or a string compared with < is a type error, as in rule-engine."""
    kind = type(value)
    if kind is float or kind is int:
        return value  # type: ignore[no-any-return,unused-ignore]
    raise TypeError(kind)


def _fast(node: Any) -> Callable[[Values], Any] | None:
    """A closure computing ``node``, or None where rule-engine must do it."""
    ast = _rule_engine()[1]
    if isinstance(node, ast.SymbolExpression) and node.scope is None:
        name = node.name

        def symbol(values: Values) -> Any:
            return values[name]
        return symbol
    if isinstance(node, ast.FloatExpression | ast.StringExpression | ast.BooleanExpression):
        constant: Any = node.value
        if isinstance(constant, Decimal):
            number = float(constant)
            if not math.isfinite(number):
                return None
            constant = int(number) if number.is_integer() else number

        def literal(values: Values) -> Any:
            return constant
        return literal
    if isinstance(node, ast.ArithmeticComparisonExpression) and node.type in _COMPARE:
        compare = _COMPARE[node.type]
        left, right = _fast(node.left), _fast(node.right)
        if left is None or right is None:
            return None

        lf, rf = left, right

        def arithmetic(values: Values) -> bool:
            return compare(_number(lf(values)), _number(rf(values)))
        return arithmetic
    if isinstance(node, ast.ComparisonExpression) and node.type in _EQUALITY:
        compare = _EQUALITY[node.type]
        left, right = _fast(node.left), _fast(node.right)
        if left is None or right is None:
            return None

        le, re = left, right

        def equality(values: Values) -> bool:
            a, b = le(values), re(values)
            # rule-engine: 1 == true is false (different types), 1 == 1.0 is true
            if (type(a) is bool) is not (type(b) is bool):
                return compare(0, 1)  # "not equal" as the operator sees it
            return compare(a, b)
        return equality
    if isinstance(node, ast.LogicExpression):
        left, right = _fast(node.left), _fast(node.right)
        if left is None or right is None:
            return None
        ll, lr = left, right
        if node.type == "and":
            return lambda values: _truth(ll(values)) and _truth(lr(values))
        if node.type == "or":
            return lambda values: _truth(ll(values)) or _truth(lr(values))
        return None
    if isinstance(node, ast.UnaryExpression) and node.type == "not":
        inner = _fast(node.right)
        if inner is None:
            return None
        negated = inner
        return lambda values: not _truth(negated(values))
    if isinstance(node, ast.ContainsExpression):
        container, member = _fast(node.container), _fast(node.member)
        if container is None or member is None:
            return None
        cf, mf = container, member

        def contains(values: Values) -> bool:
            held = cf(values)
            if not isinstance(held, Collection) or isinstance(held, str):
                raise TypeError(type(held))
            return mf(values) in held
        return contains
    return None


def _truth(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise TypeError(type(value))


_FLIPPED = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


def _threshold(node: Any) -> Threshold | None:
    ast = _rule_engine()[1]
    if not isinstance(node, ast.ArithmeticComparisonExpression) or node.type not in _FLIPPED:
        return None
    left, right = node.left, node.right
    if isinstance(left, ast.SymbolExpression) and isinstance(right, ast.FloatExpression):
        return Threshold(left.name, node.type, float(right.value))
    if isinstance(right, ast.SymbolExpression) and isinstance(left, ast.FloatExpression):
        return Threshold(right.name, _FLIPPED[node.type], float(left.value))
    return None
