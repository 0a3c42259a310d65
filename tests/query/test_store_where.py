"""`where` through the real DuckDB store: events ingested by validation, filtered in its SQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventkeep.ingest.validate import IngestContext, validate_events
from eventkeep.query import parse_where
from eventkeep.query.evaluate import matches
from eventkeep.store.base import ScanQuery
from eventkeep.store.duckdb import DuckDBStore

CTX = IngestContext("import", 1_800_000_000_000, "test")
RAW = [
    {"event": "Signed up", "properties": {"time": 1_700_000_000, "distinct_id": "ann", "$os": "Linux", "plan": "pro", "seats": 3}},
    {"event": "Signed up", "properties": {"time": 1_700_000_100, "distinct_id": "bob", "$os": "Mac", "seats": 2**64 + 1}},
    {"event": "Paid", "properties": {"time": 1_700_000_200.25, "distinct_id": 42, "plan": None, "tags": ["a", "b"]}},
    {"event": "Paid", "properties": {"time": 1_700_000_300, "distinct_id": "ann", 'we"ird.na/me~': {"k": [1]}}},
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "events.duckdb")
    batch = validate_events(RAW, CTX)
    assert not batch.errors
    s.append_sync(1, batch)
    yield s
    s.close()


def exported(store: DuckDBStore, query: ScanQuery) -> list[dict[str, Any]]:
    """Exported events, with the stored millisecond time as (fractional) seconds."""
    chunks = store.export_lines(query, time_in_ms=True)
    events = [json.loads(line) for chunk in chunks for line in chunk.splitlines()]
    for e in events:
        e["properties"]["time"] /= 1000
    return events


WHERES = [
    ('properties["$os"] == "Linux"', ["ann"]),
    ('properties["$os"] != "Linux"', ["bob", "42", "ann"]),
    ('properties["seats"] == 18446744073709551616', ["bob"]),
    ('properties["distinct_id"] == "42"', ["42"]),
    ('properties["time"] == 1700000200.25', ["42"]),
    ('event["$event_name"] == "Paid" and not defined(properties["plan"])', ["42", "ann"]),
    ('"b" in properties["tags"]', ["42"]),
    ('properties["we\\"ird.na/me~"] == properties["we\\"ird.na/me~"]', ["ann"]),
    ('has_prefix(properties["$insert_id"], "")', ["ann", "bob", "42", "ann"]),
    ('event["$time"] >= datetime("2023-11-14T22:15:00")', ["bob", "42", "ann"]),
    ('event["$time"] >= datetime("2023-11-14T22:15:00.001Z")', ["42", "ann"]),
    ('defined(user["x"])', []),
]


@pytest.mark.parametrize(("where", "who"), WHERES)
def test_store_filters_in_sql(store: DuckDBStore, where: str, who: list[str]) -> None:
    expr = parse_where(where)
    lines = exported(store, ScanQuery(1, where=expr))
    assert [line["properties"]["distinct_id"] for line in lines] == who
    assert store.count(ScanQuery(1, where=expr)) == len(who)
    # The exported events, read back, are exactly those the evaluator accepts.
    everything = exported(store, ScanQuery(1))
    assert lines == [e for e in everything if matches(expr, e)]


def test_where_parameters_follow_the_store_filters(store: DuckDBStore) -> None:
    expr = parse_where('properties["$os"] == "Linux" or event["$event_name"] == "Paid"')
    query = ScanQuery(1, from_ms=1_700_000_050_000, to_ms=1_700_000_250_000, events=("Paid",), where=expr)
    assert [line["properties"]["distinct_id"] for line in exported(store, query)] == ["42"]
    assert store.count(query) == 1
