"""`where` on the ClickHouse store, checked against the reference evaluator on a real server.

The store narrows rows with a SQL pre-filter (eventkeep.query.clickhouse_sql) and then runs
`evaluate.matches` on the rest. Two properties are checked with the query package's random
expressions and events (tests/query/strategies.py):
- the pre-filter is sound: every event the evaluator accepts passes it (a lost event would be
  a wrong export);
- end to end, an export with `where` holds exactly the events the evaluator accepts, in
  order, limits included.
Plus the DuckDB store's own `where` cases, run on ClickHouse.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.validate import validate_events
from eventkeep.query import ast, parse_where
from eventkeep.query.clickhouse_sql import compile_prefilter
from eventkeep.query.evaluate import matches
from eventkeep.store.base import ScanQuery
from eventkeep.store.clickhouse import ClickHouseStore
from eventkeep.store.clickhouse_schema import ClickHouseHTTP, ClickHouseTarget
from tests import clickhouse_fixture
from tests.query import strategies
from tests.query.harness import Event
from tests.query.test_store_where import CTX, RAW, WHERES

# Skipped on a developer machine without ClickHouse; in CI (which installs it) they must run.
pytestmark = pytest.mark.skipif(
    not clickhouse_fixture.available() and not os.environ.get("CI"), reason="clickhouse-server is not installed"
)

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def store() -> Iterator[ClickHouseStore]:
    from tests.conftest import clickhouse_cluster

    url = clickhouse_cluster().store_url(f"where_{uuid.uuid4().hex[:8]}")
    s = ClickHouseStore(ClickHouseTarget.parse(url))
    yield s
    s.close()


_projects = itertools.count(100)


def load(store: ClickHouseStore, events: Sequence[Event]) -> int:
    """Store harness events as they are (no validation), in a fresh project; `$insert_id` is
    the event's index."""
    project = next(_projects)
    batch = ValidBatch.from_columns(
        events=[e["event"] for e in events],
        distinct_ids=[e["properties"]["distinct_id"] for e in events],
        times_ms=[round(e["properties"]["time"] * 1000) for e in events],
        insert_ids=[str(index) for index in range(len(events))],
        properties=[
            msgspec.json.encode({k: v for k, v in e["properties"].items() if k not in ("time", "distinct_id")})
            for e in events
        ],
    )
    store.append_sync(project, batch)
    return project


def prefiltered(store: ClickHouseStore, project: int, expr: ast.Expr) -> set[int] | None:
    condition = compile_prefilter(expr)
    if condition is None:
        return None
    http = ClickHouseHTTP.for_target(store.target)
    try:
        rows = http.json_rows(
            f"SELECT insert_id FROM {store.tables.events} WHERE project_id = {project} AND {condition}"
        )
    finally:
        http.close()
    return {int(row["insert_id"]) for row in rows}


def check(store: ClickHouseStore, project: int, events: Sequence[Event], expr: ast.Expr) -> None:
    ordered = sorted(range(len(events)), key=lambda i: (round(events[i]["properties"]["time"] * 1000), str(i)))
    want = [i for i in ordered if matches(expr, events[i])]
    passed = prefiltered(store, project, expr)
    if passed is not None:
        assert set(want) <= passed, (strategies.to_text(expr), compile_prefilter(expr))
    expected = [events[i] for i in want]
    assert _events(store, ScanQuery(project, where=expr)) == expected, strategies.to_text(expr)
    if want:
        assert _events(store, ScanQuery(project, where=expr, limit=1)) == expected[:1]


def _events(store: ClickHouseStore, query: ScanQuery) -> list[Event]:
    """Exported events as the harness writes them: time in (fractional) seconds."""
    body = b"".join(store.export_lines(query, time_in_ms=True))
    events = [msgspec.json.decode(line) for line in body.splitlines()]
    for e in events:
        e["properties"]["time"] = e["properties"]["time"] / 1000
    return events


@pytest.fixture(scope="module")
def fixed(store: ClickHouseStore) -> tuple[int, list[Event]]:
    events = strategies.fixed_events()
    return load(store, events), events


@settings(SETTINGS, max_examples=200)
@given(expr=strategies.expressions())
def test_fixed_events(store: ClickHouseStore, fixed: tuple[int, list[Event]], expr: ast.Expr) -> None:
    project, events = fixed
    check(store, project, events, expr)


@settings(SETTINGS, max_examples=50)
@given(events=st.lists(strategies.events(), min_size=1, max_size=8), expr=strategies.expressions(3))
def test_random_events(store: ClickHouseStore, events: list[Event], expr: ast.Expr) -> None:
    check(store, load(store, events), events, expr)


FOCUSED = [
    'properties["s"] == "Linux"', 'properties["n"] > 2', 'properties["f"] <= -2.5', 'properties["b"] == true',
    'properties["i"] == 18446744073709551617', 'defined(properties["z"])', 'properties["s"] in ["Linux", "x"]',
    'event["$event_name"] == "Signed up" or properties["time"] < 1700000001', 'has_prefix(properties["d"], "2024")',
    'properties["distinct_id"] == "abc"', 'properties["l"] == [1, "x", [2, [3]]]',
    'event["$time"] >= datetime("2024-01-01") and properties["f"] != 1',
]


@pytest.mark.parametrize("text", FOCUSED)
def test_common_filters_are_exact_and_narrowed_in_sql(
    store: ClickHouseStore, fixed: tuple[int, list[Event]], text: str
) -> None:
    """The filters people write most are decided (loosely) in SQL, not all left to Python."""
    project, events = fixed
    expr = parse_where(text)
    check(store, project, events, expr)
    passed = prefiltered(store, project, expr)
    assert passed is not None and len(passed) < len(events), text


# -- the DuckDB store's cases -----------------------------------------------------------


@pytest.fixture(scope="module")
def validated(store: ClickHouseStore) -> int:
    project = next(_projects)
    batch = validate_events(RAW, CTX)
    assert not batch.errors
    store.append_sync(project, batch)
    return project


def exported(store: ClickHouseStore, query: ScanQuery) -> list[dict[str, Any]]:
    chunks = store.export_lines(query, time_in_ms=True)
    events = [json.loads(line) for chunk in chunks for line in chunk.splitlines()]
    for e in events:
        e["properties"]["time"] /= 1000
    return events


@pytest.mark.parametrize(("where", "who"), WHERES)
def test_store_cases(store: ClickHouseStore, validated: int, where: str, who: list[str]) -> None:
    expr = parse_where(where)
    lines = exported(store, ScanQuery(validated, where=expr))
    assert [line["properties"]["distinct_id"] for line in lines] == who
    assert store.count(ScanQuery(validated, where=expr)) == len(who)
    everything = exported(store, ScanQuery(validated))
    assert lines == [e for e in everything if matches(expr, e)]


def test_where_with_time_shift_and_the_other_filters(store: ClickHouseStore, validated: int) -> None:
    expr = parse_where('properties["$os"] == "Linux" or event["$event_name"] == "Paid"')
    query = ScanQuery(validated, from_ms=1_700_000_050_000, to_ms=1_700_000_250_000, events=("Paid",), where=expr)
    assert [line["properties"]["distinct_id"] for line in exported(store, query)] == ["42"]
    assert store.count(query) == 1
    # The evaluator sees the true time even when the export shifts it into a local zone.
    timed = ScanQuery(validated, where=parse_where('properties["time"] == 1700000200.25'))
    shifted = b"".join(store.export_lines(timed, time_in_ms=True, local_time_zone="America/Los_Angeles"))
    assert json.loads(shifted)["properties"]["time"] == 1_700_000_200_250 - 8 * 3600 * 1000
