"""The reference evaluator: the `where` rules applied to one event, in Python.

Every SQL compiler is tested against this module, so it follows the spec literally and favours
clarity over speed. The text patterns below are shared with the compilers and are written in
the subset of regular-expression syntax that Python and RE2 (DuckDB, ClickHouse) read alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias

from eventkeep.query import ast

# number(): a decimal with optional surrounding spaces; group 1 is the number itself.
NUMBER_TEXT: Final = (
    r"[ \t\n\r]*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t\n\r]*"
)
# datetime(): YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS[.ffffff][Z], UTC. Group 1 is the whole text;
# hours, minutes and seconds are range-checked here, days by the calendar.
DATETIME_TEXT: Final = (
    r"((?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-([0-9]{2})-([0-9]{2})"
    r"(?:T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(?:\.([0-9]{1,6}))?Z?)?)"
)
_NUMBER_RE = re.compile(NUMBER_TEXT)
_DATETIME_RE = re.compile(DATETIME_TEXT)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Undefined:
    """The value of an absent property or of an operation with no defined result."""

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Final = Undefined()


@dataclass(frozen=True, slots=True)
class DateTime:
    """A UTC instant in microseconds since the epoch (the unit both engines can hold exactly)."""

    micros: int


# Lists are Python lists (from events) or tuples (from literals); their elements and object
# values are raw JSON values, converted with `from_json` when looked at.
Value: TypeAlias = (
    "str | float | bool | list[Any] | tuple[Any, ...] | dict[str, Any] | DateTime | Undefined | None"
)


def from_json(raw: Any) -> Value:
    """A decoded JSON value as a `where` value: every number is a 64-bit float."""
    if raw is None or isinstance(raw, bool | str | float | list | tuple | dict):
        return raw
    if isinstance(raw, int):
        try:
            return float(raw)
        except OverflowError:  # beyond any float: ingestion refuses such numbers
            return UNDEFINED
    return UNDEFINED


def _finite(value: float) -> float | Undefined:
    return value if math.isfinite(value) else UNDEFINED


def equals(left: Value, right: Value) -> bool:
    """`==`: same type, defined, not null, and equal; containers element by element."""
    if left is UNDEFINED or right is UNDEFINED or left is None or right is None:
        return False
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, str | float | DateTime):
        return type(left) is type(right) and left == right
    if isinstance(left, list | tuple):
        if not isinstance(right, list | tuple):
            return False
        return len(left) == len(right) and all(
            equals(from_json(a), from_json(b)) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, dict):
        if not isinstance(right, dict) or left.keys() != right.keys():
            return False
        return all(equals(from_json(left[k]), from_json(right[k])) for k in left)
    return False


def to_boolean(value: Value) -> bool:
    if value is UNDEFINED or value is None or value is False:
        return False
    if isinstance(value, float):
        return value != 0
    if isinstance(value, str):
        return value not in ("", "false")
    if isinstance(value, list | tuple):
        return len(value) > 0
    return True


def to_number(value: Value) -> float | Undefined:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        match = _NUMBER_RE.fullmatch(value)
        return _finite(float(match.group(1))) if match else UNDEFINED
    return UNDEFINED


def format_number(value: float) -> str:
    """Shortest round-trip decimal, laid out as JavaScript's Number#toString does."""
    if value == 0:
        return "0"
    if value < 0:
        return "-" + format_number(-value)
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    significant = significant.rstrip("0")
    k, n = len(significant), point
    if k <= n <= 21:
        return significant + "0" * (n - k)
    if 0 < n <= 21:
        return significant[:n] + "." + significant[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + significant
    tail = "." + significant[1:] if k > 1 else ""
    return f"{significant[0]}{tail}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"


def to_string(value: Value) -> str | Undefined | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, float):
        return format_number(value)
    return UNDEFINED


def parse_datetime(value: Value) -> DateTime | Undefined:
    if not isinstance(value, str):
        return UNDEFINED
    match = _DATETIME_RE.fullmatch(value)
    if match is None:
        return UNDEFINED
    year = int(match.group(1)[:4])
    month, day, hour, minute, second, fraction = match.group(2, 3, 4, 5, 6, 7)
    try:
        instant = datetime(
            year,
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "").ljust(6, "0")),
            tzinfo=UTC,
        )
    except ValueError:  # no such day
        return UNDEFINED
    delta = instant - _EPOCH
    return DateTime((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)


def round_half_away(value: float) -> float:
    whole = math.floor(abs(value))
    if abs(value) - whole >= 0.5:  # exact: both are doubles of the same magnitude
        whole += 1
    return math.copysign(float(whole), value)


def _arithmetic(op: str, left: Value, right: Value) -> Value:
    if op == "+" and isinstance(left, str) and isinstance(right, str):
        return left + right
    if not (isinstance(left, float) and isinstance(right, float)):
        return UNDEFINED
    if op == "+":
        return _finite(left + right)
    if op == "-":
        return _finite(left - right)
    if op == "*":
        return _finite(left * right)
    if right == 0:
        return UNDEFINED
    if op == "/":
        return _finite(left / right)
    return math.fmod(left, right)  # the sign of the dividend


def _compare(op: str, left: Value, right: Value) -> Value:
    a: float | int
    b: float | int
    if isinstance(left, float) and isinstance(right, float):
        a, b = left, right
    elif isinstance(left, DateTime) and isinstance(right, DateTime):
        a, b = left.micros, right.micros
    else:
        return UNDEFINED
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    if op == "<":
        return a < b
    return a <= b


def _contains(needle: Value, haystack: Value) -> Value:
    if isinstance(needle, str) and isinstance(haystack, str):
        return needle in haystack
    if isinstance(haystack, list | tuple):
        return any(equals(needle, from_json(item)) for item in haystack)
    return UNDEFINED


def _call(function: ast.Function, args: list[Value]) -> Value:
    value = args[0]
    if function == "defined":
        return value is not UNDEFINED and value is not None
    if function == "boolean":
        return to_boolean(value)
    if function == "number":
        return to_number(value)
    if function == "string":
        return to_string(value)
    if function == "datetime":
        return parse_datetime(value)
    if function == "has_prefix":
        prefix = args[1]
        if isinstance(value, str) and isinstance(prefix, str):
            return value.startswith(prefix)
        return UNDEFINED
    if not isinstance(value, float):
        return UNDEFINED
    if function == "floor":
        return float(math.floor(value))
    if function == "ceil":
        return float(math.ceil(value))
    return round_half_away(value)


def _event_time(event: Mapping[str, Any]) -> DateTime | Undefined:
    properties = event.get("properties")
    seconds = properties.get("time") if isinstance(properties, Mapping) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return UNDEFINED
    millis = seconds * 1000
    if not math.isfinite(millis):
        return UNDEFINED
    # Stores keep milliseconds, rounded the way ingestion rounds them.
    return DateTime(round(millis) * 1000)


def evaluate(expr: ast.Expr, event: Mapping[str, Any]) -> Value:
    """The value of `expr` for one event: {"event": name, "properties": {...}}."""
    if isinstance(expr, ast.Literal):
        return expr.value
    if isinstance(expr, ast.Property):
        properties = event.get("properties")
        if isinstance(properties, Mapping) and expr.name in properties:
            return from_json(properties[expr.name])
        return UNDEFINED
    if isinstance(expr, ast.UserProperty):
        return UNDEFINED  # no profiles yet
    if isinstance(expr, ast.EventAttribute):
        if expr.name == "$time":
            return _event_time(event)
        name = event.get("event")
        return name if isinstance(name, str) else UNDEFINED
    if isinstance(expr, ast.Unary):
        operand = evaluate(expr.operand, event)
        if expr.op == "-":
            return -operand if isinstance(operand, float) else UNDEFINED
        if isinstance(operand, bool):
            return not operand
        return True if operand is UNDEFINED or operand is None else UNDEFINED
    if isinstance(expr, ast.Call):
        return _call(expr.function, [evaluate(arg, event) for arg in expr.args])
    op = expr.op
    if op == "and":
        return all(to_boolean(evaluate(e, event)) for e in ast.operands(expr))
    if op == "or":
        return any(to_boolean(evaluate(e, event)) for e in ast.operands(expr))
    left, right = evaluate(expr.left, event), evaluate(expr.right, event)
    if op == "==":
        return equals(left, right)
    if op == "!=":
        return not equals(left, right)
    if op == "in":
        return _contains(left, right)
    if op in (">", ">=", "<", "<="):
        return _compare(op, left, right)
    return _arithmetic(op, left, right)


def matches(expr: ast.Expr, event: Mapping[str, Any]) -> bool:
    """Whether the event passes the filter: `boolean(result)` is true."""
    return to_boolean(evaluate(expr, event))
