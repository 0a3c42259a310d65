"""Random expressions over random events: the compiled DuckDB SQL must agree with `evaluate`.

Each expression is printed, parsed back (the tree must round-trip), then run both ways: the
WHERE must select exactly the events `matches` accepts, and every compiled value (read back
from its typed slots) must equal the evaluator's value, type included.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.query import ast, parse_where
from eventkeep.query.evaluate import matches
from tests.query import strategies
from tests.query.harness import Event, EventTable, expected_values

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def fixed_table() -> Iterator[EventTable]:
    table = EventTable(strategies.fixed_events())
    yield table
    table.con.close()


@pytest.fixture(scope="module")
def scratch_table() -> Iterator[EventTable]:
    table = EventTable()
    yield table
    table.con.close()


def check(table: EventTable, expr: ast.Expr) -> None:
    text = strategies.to_text(expr)
    parsed = parse_where(text)
    assert parsed == expr, text
    want = [i for i, e in enumerate(table.events) if matches(parsed, e)]
    assert table.selected(parsed) == want, text
    assert table.values([parsed]) == [expected_values(parsed, table.events)], text


@settings(SETTINGS, max_examples=2000)
@given(expr=strategies.expressions())
def test_fixed_events(fixed_table: EventTable, expr: ast.Expr) -> None:
    check(fixed_table, expr)


@settings(SETTINGS, max_examples=200)
@given(events=st.lists(strategies.events(), min_size=1, max_size=8), expr=strategies.expressions(3))
def test_random_events(scratch_table: EventTable, events: list[Event], expr: ast.Expr) -> None:
    scratch_table.clear()
    scratch_table.insert(events)
    check(scratch_table, expr)
