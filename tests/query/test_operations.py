"""Every operation on random values: compiled DuckDB values must equal the evaluator's.

Where test_differential explores random expression shapes, this drives each single operation
over many values at once (one table of up to 100 events per example), which is what finds
disagreements in number formatting, number and date parsing, rounding and overflow.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.query import ast
from eventkeep.query.evaluate import matches
from tests.query import strategies
from tests.query.harness import EventTable, event, expected_values

X, Y = ast.Property("x"), ast.Property("y")
OPERATIONS: list[ast.Expr] = [
    *(ast.Call(f, (X,)) for f in strategies.UNARY_FUNCTIONS),
    ast.Call("string", (ast.Call("number", (X,)),)),
    ast.Call("has_prefix", (X, Y)),
    ast.Unary("not", X),
    ast.Unary("-", X),
    *(ast.Binary(op, X, Y) for op in strategies.BINARY_OPS),
    ast.Binary("==", ast.Call("datetime", (X,)), ast.Call("datetime", (Y,))),
    ast.Binary("<", ast.Call("datetime", (X,)), ast.EventAttribute("$time")),
]

# Values that exercise the operations: numbers of every size, and number-like and
# date-like text, besides everything else JSON can hold.
values = st.one_of(
    strategies.floats,
    strategies.ints,
    strategies.numeric_strings,
    strategies.date_strings,
    strategies.json_values(),
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(pairs=st.lists(st.tuples(values, values), min_size=1, max_size=100))
def test_each_operation(scratch_table: EventTable, pairs: list[tuple[object, object]]) -> None:
    scratch_table.clear()
    scratch_table.insert([event(x=a, y=b) for a, b in pairs])
    events = scratch_table.events
    got_values = scratch_table.values(OPERATIONS)
    got_conditions = scratch_table.conditions(OPERATIONS)
    for expr, values, conditions in zip(OPERATIONS, got_values, got_conditions, strict=True):
        assert values == expected_values(expr, events), expr
        assert conditions == [matches(expr, e) for e in events], expr


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(numbers=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=200))
def test_string_of_any_double(scratch_table: EventTable, numbers: list[float]) -> None:
    """string() of a double: the same shortest digits and layout in SQL as in Python."""
    scratch_table.clear()
    scratch_table.insert([event(x=n) for n in numbers])
    expr = ast.Call("string", (X,))
    assert scratch_table.values([expr]) == [expected_values(expr, scratch_table.events)]


@pytest.fixture(scope="module")
def scratch_table() -> Iterator[EventTable]:
    table = EventTable()
    yield table
    table.con.close()
