"""The ClickHouse side of `where`: a SQL pre-filter, then the reference evaluator on what passes.

ClickHouse 18.16 (the version CI can install) has no JSON functions beyond the approximate
`visitParam*` ones, which find a key at any depth and cannot walk lists, so the exact typed
compilation `sqlgen` does for DuckDB (slots per type, canonical container text, JavaScript
number formatting) cannot be expressed there. The ClickHouse store therefore splits the work:

- `compile_prefilter` turns the parts of a filter that are cheap and safe to decide in SQL
  into a condition that is true for *every* event `evaluate.matches` accepts (and maybe a
  few more): comparisons of a property, the event name, `distinct_id` or the time with a
  constant, `in` a constant list, `defined`, `has_prefix`, joined by `and`/`or`. Top-level
  properties are read exactly from the store's `prop_keys`/`prop_raw` columns (the raw JSON
  text of each top-level value), never with `visitParam*`. Anything else (negations,
  arithmetic, functions, nested values) is left unconstrained.
- The store then runs `evaluate.matches` on every event that passed, so the answer is exactly
  the reference evaluator's, whatever the filter.

Soundness rules for the SQL (each keeps every match): a JSON string without backslashes has
one spelling, so text equality decides equality, and strings with escapes are left to Python;
numbers are compared with a tolerance far wider than any parsing difference between
ClickHouse and Python; `==` with null, and comparisons across types, never hold.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from eventkeep.query import ast
from eventkeep.query.evaluate import UNDEFINED, DateTime, evaluate, from_json
from eventkeep.store.clickhouse_schema import VALUE_SEPARATOR, literal

NEVER = "0"
_INT64 = 2**63 - 1
_RELATIVE = 1e-9  # ClickHouse's float parsing is off by at most a few ulps (~1e-16)
_ABSOLUTE = 1e-300
_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">="}


def raw_value(name: str) -> str:
    """The raw JSON text of top-level property `name`, or '' when the event has no such key."""
    values = f"splitByChar({literal(VALUE_SEPARATOR)}, prop_raw)"
    return f"arrayElement({values}, indexOf(prop_keys, {literal(name)}))"


def _json_text(value: str) -> str:
    return msgspec.json.encode(value).decode()


def _escaped_string(raw: str) -> str:
    """A JSON string whose text holds an escape: its spelling is not unique, Python decides."""
    return f"(startsWith({raw}, '\"') AND position({raw}, '\\\\') > 0)"


def _is_number_text(raw: str) -> str:
    return f"match({raw}, '^-?[0-9]')"


def _tolerance(value: float) -> float:
    return abs(value) * _RELATIVE + _ABSOLUTE


def _is_constant(expr: ast.Expr) -> bool:
    """No property, attribute or profile in it: the evaluator gives its value up front."""
    if isinstance(expr, ast.Property | ast.EventAttribute | ast.UserProperty):
        return False
    return all(_is_constant(child) for child in ast.children(expr))


def _millis_range(micros_lo: float, micros_hi: float) -> str:
    """time_ms within [lo, hi] microseconds, one millisecond wider each side."""
    if not (math.isfinite(micros_lo) and math.isfinite(micros_hi)):
        return NEVER
    lo = math.floor(micros_lo / 1000) - 1
    hi = math.ceil(micros_hi / 1000) + 1
    if hi < -_INT64 or lo > _INT64:
        return NEVER
    return f"(time_ms BETWEEN {max(lo, -_INT64)} AND {min(hi, _INT64)})"


def _time_bound(op: str, micros: float) -> str:
    """time_ms (in microseconds) `op` micros, loosened by a millisecond."""
    if not math.isfinite(micros):
        below = micros < 0  # the bound lies below every time
        return "1" if below == (op in (">", ">=")) else NEVER
    if op in (">", ">="):
        bound = math.floor(micros / 1000) - 1
        return "1" if bound < -_INT64 else (NEVER if bound > _INT64 else f"(time_ms >= {bound})")
    bound = math.ceil(micros / 1000) + 1
    return "1" if bound > _INT64 else (NEVER if bound < -_INT64 else f"(time_ms <= {bound})")


def _equals(target: ast.Expr, value: Any) -> str | None:
    """A condition holding whenever `target == value` (value: an evaluated constant)."""
    if value is None or value is UNDEFINED:
        return NEVER  # `==` is false for null and undefined
    if isinstance(target, ast.EventAttribute):
        if target.name == "$event_name":
            return f"(event = {literal(value)})" if isinstance(value, str) else NEVER
        if isinstance(value, DateTime):
            return _millis_range(value.micros, value.micros)
        return NEVER
    if not isinstance(target, ast.Property):
        return None
    if target.name == "distinct_id":
        return f"(distinct_id = {literal(value)})" if isinstance(value, str) else NEVER
    if target.name == "time":  # the event time in seconds, a number
        if not isinstance(value, float) or isinstance(value, bool) or not math.isfinite(value):
            return NEVER
        return _millis_range(value * 1e6, value * 1e6)
    raw = raw_value(target.name)
    if isinstance(value, bool):
        return f"({raw} = {literal('true' if value else 'false')})"
    if isinstance(value, str):
        return f"(({raw} = {literal(_json_text(value))}) OR {_escaped_string(raw)})"
    if isinstance(value, float):
        if not math.isfinite(value):
            return NEVER
        return (
            f"({_is_number_text(raw)} AND abs(toFloat64OrZero({raw}) - {literal(value)}) <= "
            f"{literal(_tolerance(value))})"
        )
    if isinstance(value, list | tuple):
        return f"startsWith({raw}, '[')"
    if isinstance(value, dict):
        return f"startsWith({raw}, '{{')"
    return NEVER  # a DateTime: stored values never are one


def _compare(target: ast.Expr, op: str, value: Any) -> str | None:
    """A condition holding whenever `target op value` is true."""
    if isinstance(target, ast.EventAttribute):
        if target.name == "$time" and isinstance(value, DateTime):
            return _time_bound(op, value.micros)
        return NEVER  # names are strings; times compare with times only
    if not isinstance(target, ast.Property):
        return None
    if not isinstance(value, float) or isinstance(value, bool) or not math.isfinite(value):
        return NEVER  # only numbers (and times) compare, and no stored value is a time
    if target.name == "distinct_id":
        return NEVER
    if target.name == "time":
        return _time_bound(op, value * 1e6)
    raw = raw_value(target.name)
    loose = value - _tolerance(value) if op in (">", ">=") else value + _tolerance(value)
    return f"({_is_number_text(raw)} AND toFloat64OrZero({raw}) {op} {literal(loose)})"


def _prefix(target: ast.Expr, value: Any) -> str | None:
    if not isinstance(value, str):
        return NEVER
    if isinstance(target, ast.EventAttribute):
        return f"startsWith(event, {literal(value)})" if target.name == "$event_name" else NEVER
    if not isinstance(target, ast.Property):
        return None
    if target.name == "distinct_id":
        return f"startsWith(distinct_id, {literal(value)})"
    if target.name == "time":
        return NEVER
    raw = raw_value(target.name)
    return f"(startsWith({raw}, {literal(_json_text(value)[:-1])}) OR {_escaped_string(raw)})"


def _any_of(conditions: list[str | None]) -> str | None:
    if any(c is None for c in conditions):
        return None
    kept = [c for c in conditions if c != NEVER]
    if not kept:
        return NEVER
    return "(" + " OR ".join(c for c in kept if c is not None) + ")"


def compile_prefilter(expr: ast.Expr) -> str | None:
    """A condition true for every event `evaluate.matches(expr, …)` accepts; None: no limit."""
    if _is_constant(expr):
        return None  # the evaluator decides; constants cost nothing there
    if isinstance(expr, ast.Binary):
        if expr.op == "and":
            parts = [compile_prefilter(e) for e in ast.operands(expr)]
            kept = [p for p in parts if p is not None]
            if NEVER in kept:
                return NEVER
            return "(" + " AND ".join(kept) + ")" if kept else None
        if expr.op == "or":
            return _any_of([compile_prefilter(e) for e in ast.operands(expr)])
        if expr.op in ("==", ">", ">=", "<", "<=", "in"):
            left, right = expr.left, expr.right
            if expr.op == "in":
                if _is_constant(right) and not _is_constant(left):
                    haystack = evaluate(right, {})
                    if isinstance(haystack, list | tuple):
                        return _any_of([_equals(left, from_json(item)) for item in haystack])
                return None
            op: str = expr.op
            if _is_constant(left) and not _is_constant(right):
                left, right = right, left
                op = _FLIP.get(op, op)
            if not _is_constant(right):
                return None
            value = evaluate(right, {})
            return _equals(left, value) if op == "==" else _compare(left, op, value)
        return None
    if isinstance(expr, ast.Call):
        if expr.function == "defined" and isinstance(expr.args[0], ast.Property):
            name = expr.args[0].name
            if name in ("time", "distinct_id"):
                return None
            raw = raw_value(name)
            return f"(has(prop_keys, {literal(name)}) AND {raw} != 'null')"
        if expr.function == "has_prefix" and _is_constant(expr.args[1]) and not _is_constant(expr.args[0]):
            return _prefix(expr.args[0], evaluate(expr.args[1], {}))
    return None

