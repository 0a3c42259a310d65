"""Expressions as deep as the parser allows compile to SQL that DuckDB runs quickly.

DuckDB copies an expression wherever it is repeated or captured by a lambda, so a compiler
that used an operand twice per level would build SQL that takes exponential time or memory to
bind. Each chain below nests one construct to the depth limit; it must agree with the
evaluator and finish in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from eventkeep.query import ast, parse_where
from eventkeep.query.parser import MAX_DEPTH
from tests.query import strategies
from tests.query.harness import EventTable, event, expected_values

X, Y, L = ast.Property("x"), ast.Property("y"), ast.Property("l")
LEVELS = MAX_DEPTH - 1


def chain(wrap: Callable[[ast.Expr], ast.Expr], levels_each: int = 1) -> ast.Expr:
    expr: ast.Expr = X
    for _ in range(LEVELS // levels_each):
        expr = wrap(expr)
    return expr


def call(*functions: ast.Function) -> Callable[[ast.Expr], ast.Expr]:
    def wrap(expr: ast.Expr) -> ast.Expr:
        for f in functions:
            expr = ast.Call(f, (expr,))
        return expr

    return wrap


def binary(op: ast.BinaryOp, left: bool) -> Callable[[ast.Expr], ast.Expr]:
    return lambda e: ast.Binary(op, e, Y) if left else ast.Binary(op, Y, e)


CHAINS: dict[str, ast.Expr] = {
    **{f: chain(call(f)) for f in strategies.UNARY_FUNCTIONS},
    "string(number())": chain(call("number", "string"), 2),
    "boolean(string())": chain(call("string", "boolean"), 2),
    "number(boolean())": chain(call("boolean", "number"), 2),
    "not": chain(lambda e: ast.Unary("not", e)),
    "-": chain(lambda e: ast.Unary("-", e)),
    "has_prefix": chain(lambda e: ast.Call("has_prefix", (ast.Call("string", (e,)), Y)), 2),
    **{f"left {op}": chain(binary(op, left=True)) for op in strategies.BINARY_OPS},
    **{f"right {op}": chain(binary(op, left=False)) for op in strategies.BINARY_OPS},
    "in list": chain(lambda e: ast.Binary("in", e, L)),
    "== list": chain(lambda e: ast.Binary("==", L, ast.Binary("in", e, L)), 2),
}


@pytest.fixture(scope="module")
def table() -> Iterator[EventTable]:
    table = EventTable(
        [
            event(x="1", y="1", l=["1", True, [1]]),
            event(x=2, y=0.5, l=[2, False, {"a": None}]),
            event(x=True, y="", l=[]),
            event(x=[1, "1"], y=None, l=[[1, "1"], True]),
        ]
    )
    yield table
    table.con.close()


@pytest.mark.parametrize("name", list(CHAINS))
def test_deepest_expressions_run_quickly(table: EventTable, name: str) -> None:
    expr = CHAINS[name]
    assert parse_where(strategies.to_text(expr)) == expr  # within the parser's limits
    started = time.monotonic()
    selected = table.selected(expr)
    values = table.values([expr])
    assert time.monotonic() - started < 10, name
    assert values == [expected_values(expr, table.events)]
    assert selected == [i for i, v in enumerate(values[0]) if v != ("boolean", False) and _truthy(v)]


def _truthy(value: tuple[object, ...]) -> bool:
    return value not in (("undefined",), ("null",), ("number", 0.0), ("string", ""), ("string", "false"), ("list", []))
