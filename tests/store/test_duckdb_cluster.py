"""Clustering the DuckDB store by time: same export bytes and order, dedup still exact."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import duckdb
import pytest

from eventkeep.ingest.validate import IngestContext, validate_events
from eventkeep.query import parse_where
from eventkeep.store import duckdb_cluster
from eventkeep.store.base import ScanQuery
from eventkeep.store.duckdb import SCHEMA, DuckDBStore

CTX = IngestContext("import", 1_800_000_000_000, "test")
START_S = 1_700_000_000
DAY_S = 86_400


def scattered_events(count: int, seed: int = 3, **extra: Any) -> list[dict[str, Any]]:
    """Events spread at random over ten days, in no time order; some share a second."""
    rng = random.Random(seed)
    return [
        {
            "event": ("Viewed", "Paid", "Shared")[i % 3],
            "properties": {
                "time": START_S + rng.randrange(10 * DAY_S // 60) * 60,
                "distinct_id": f"u{rng.randrange(50)}",
                "$insert_id": f"id-{i}",
                "n": i,
                **({"tag": "x"} if i % 2 else {}),
                **extra,
            },
        }
        for i in range(count)
    ]


def append(store: DuckDBStore, events: list[dict[str, Any]], project_id: int = 1) -> None:
    for start in range(0, len(events), 500):
        result = validate_events(events[start : start + 500], CTX)
        assert not result.errors
        store.append_sync(project_id, result)


@pytest.fixture
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scale the thresholds down to a test's few thousand events."""
    monkeypatch.setattr(duckdb_cluster, "VECTOR_ROWS", 64)
    monkeypatch.setattr(duckdb_cluster, "step_rows", lambda con: 500)


@pytest.fixture
def store(tmp_path: Path, small_steps: None) -> Iterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "events.duckdb")
    yield s
    s.close()


EXPORTS: list[tuple[ScanQuery, dict[str, Any]]] = [
    (ScanQuery(1), {}),
    (ScanQuery(1), {"time_in_ms": True}),
    (ScanQuery(1), {"local_time_zone": "America/New_York"}),
    (ScanQuery(1, limit=777), {}),
    (ScanQuery(1, events=("Paid",)), {}),
    (ScanQuery(1, where=parse_where('properties["tag"] == "x"')), {}),
    (ScanQuery(1, from_ms=(START_S + 2 * DAY_S) * 1000, to_ms=(START_S + 5 * DAY_S + 7) * 1000, limit=900), {}),
    (ScanQuery(2), {}),
]


def export_all(store: DuckDBStore) -> list[bytes]:
    return [b"".join(store.export_lines(query, rows_per_window=300, **kwargs)) for query, kwargs in EXPORTS]


def stored_times(store: DuckDBStore) -> list[int]:
    store._caught_up()
    return [row[0] for row in store._con.cursor().execute("SELECT time_ms FROM events ORDER BY rowid").fetchall()]


def test_clustering_keeps_the_exported_bytes_and_stores_rows_in_time_order(store: DuckDBStore) -> None:
    append(store, scattered_events(4000))
    append(store, scattered_events(300, seed=4), project_id=2)
    before = export_all(store)
    times = stored_times(store)
    assert times != sorted(times)

    store.cluster(timeout=60)  # (idle steps may have begun already)

    assert stored_times(store) == sorted(times)
    assert export_all(store) == before
    exported = [json.loads(line) for line in before[0].splitlines()]
    assert len(exported) == 4000
    keys = [(e["properties"]["time"], e["properties"]["$insert_id"]) for e in exported]
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)
    by_time: dict[int, list[str]] = {}
    for t, insert_id in keys:
        by_time.setdefault(t, []).append(insert_id)
    assert all(ids == sorted(ids) for ids in by_time.values())  # ties in insert_id order
    assert store.cluster(timeout=60) == 0  # nothing scattered any more


def test_dedup_stays_exact_after_clustering(store: DuckDBStore) -> None:
    events = scattered_events(3000)
    append(store, events)
    assert store.cluster(timeout=60) > 0
    append(store, scattered_events(3000, version=2)[::7])  # the same keys again: latest wins
    append(store, [{**e, "properties": {**e["properties"], "$insert_id": "new-" + str(i)}}
                   for i, e in enumerate(events[:50])])
    assert store.count(ScanQuery(1)) == 3050
    assert store.cluster(timeout=60) >= 0
    append(store, scattered_events(3000, version=3)[::5])
    assert store.count(ScanQuery(1)) == 3050
    versions: dict[str, int] = {}
    for line in b"".join(store.export_lines(ScanQuery(1))).splitlines():
        props = json.loads(line)["properties"]
        versions[props["$insert_id"]] = props.get("version", 1)
    assert len(versions) == 3050
    for i in range(3000):
        expected = 3 if i % 5 == 0 else 2 if i % 7 == 0 else 1
        assert versions[f"id-{i}"] == expected, i
    count, distinct = store._con.cursor().execute("SELECT count(*), count(DISTINCT seq) FROM events").fetchone()
    assert count == distinct == 3050


def test_a_busy_hour_is_split_into_several_windows(store: DuckDBStore) -> None:
    rng = random.Random(5)
    busy = [{"event": "e", "properties": {"time": START_S + rng.randrange(3600), "distinct_id": "u",
                                           "$insert_id": f"b{i}"}} for i in range(1000)]
    append(store, busy)
    store._caught_up()
    windows = list(store._windows(ScanQuery(1), lambda: 100))
    assert len(windows) >= 5
    assert windows[0][0] is None and windows[-1][1] is None
    assert all(a[1] == b[0] for a, b in pairwise(windows))
    exported = [json.loads(line)["properties"] for line in b"".join(store.export_lines(ScanQuery(1), rows_per_window=100)).splitlines()]
    assert [(p["time"], p["$insert_id"]) for p in exported] == sorted((e["properties"]["time"], e["properties"]["$insert_id"]) for e in busy)


# -- the clustering steps themselves, on a plain connection (no writer thread) -------------


@pytest.fixture
def con(small_steps: None) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(":memory:")
    connection.execute(SCHEMA)
    connection.execute("""
        INSERT INTO events
        SELECT i + 1, 1, 'e', 'u', 1700000000000 + (hash(i) % 864000) * 1000, 'id' || i, 0, '{}'
        FROM range(5000) AS t(i)
    """)
    yield connection
    connection.close()


def stored(con: duckdb.DuckDBPyConnection) -> list[Any]:
    return con.execute("SELECT * FROM events ORDER BY rowid").fetchall()


def test_idle_steps_move_one_range_at_a_time_then_settle(con: duckdb.DuckDBPyConnection) -> None:
    clustering = duckdb_cluster.TimeClustering()
    checkpoints: list[int] = []
    plan = duckdb_cluster.scattered_ranges(con, 500)
    assert len(plan) >= 8
    for step in range(len(plan)):
        clustering.run_idle(con, lambda step=step: checkpoints.append(step))
    assert checkpoints == [len(plan) - 1]  # once, when the pass ends
    times = [row[0] for row in con.execute("SELECT time_ms FROM events ORDER BY rowid").fetchall()]
    assert times == sorted(times)
    assert con.execute("SELECT count(*), count(DISTINCT seq) FROM events").fetchone() == (5000, 5000)
    assert duckdb_cluster.scattered_ranges(con, 500) == []
    clustering._not_before = 0.0
    clustering.run_idle(con, lambda: checkpoints.append(-1))  # plans, finds nothing, remembers
    assert checkpoints == [len(plan) - 1] and clustering._settled is not None


def test_idle_steps_wait_for_running_exports(con: duckdb.DuckDBPyConnection) -> None:
    clustering = duckdb_cluster.TimeClustering()
    before = stored(con)
    with clustering.reading():
        clustering.run_idle(con, lambda: None)
    assert stored(con) == before
    clustering.run_idle(con, lambda: None)  # one range moved, more to go
    after = stored(con)
    assert after != before and sorted(after) == sorted(before)


def test_a_failing_step_changes_nothing_and_backs_off(con: duckdb.DuckDBPyConnection) -> None:
    class FailingInsert:
        """The connection, but the re-insert fails after the delete."""

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("INSERT INTO events"):
                raise duckdb.OutOfMemoryException("as if the memory limit were too small")
            return con.execute(sql, *args)

    clustering = duckdb_cluster.TimeClustering()
    before = stored(con)
    clustering.run_idle(FailingInsert(), lambda: None)
    assert clustering._not_before > 0 and clustering._plan == []
    assert stored(con) == before  # rolled back
    clustering.run_idle(con, lambda: None)  # backing off: does not even plan
    assert clustering._plan == [] and stored(con) == before


def test_memory_limit_sizes_the_steps() -> None:
    connection = duckdb.connect(":memory:")
    connection.execute("SET memory_limit = '128MB'")
    assert duckdb_cluster.memory_limit_bytes(connection) == 122 * 1024**2
    assert duckdb_cluster.step_rows(connection) == 122 * 1024**2 // 2 // 2000
    connection.execute("SET memory_limit = '4GB'")
    assert duckdb_cluster.step_rows(connection) == duckdb_cluster.MAX_STEP_ROWS


def test_an_export_waits_for_a_step_under_way() -> None:
    clustering = duckdb_cluster.TimeClustering()
    entered = threading.Event()

    def export() -> None:
        with clustering.reading():
            entered.set()

    with clustering._moving:  # as during a step
        thread = threading.Thread(target=export)
        thread.start()
        assert not entered.wait(0.3)
    assert entered.wait(10)
    thread.join()


def test_export_windows_are_sized_from_memory(store: DuckDBStore, monkeypatch: pytest.MonkeyPatch) -> None:
    append(store, scattered_events(2000))
    whole = b"".join(store.export_lines(ScanQuery(1)))  # one window: 2000 short lines
    windows: list[ScanQuery] = []
    export_window = store._export_window

    def spy(query: ScanQuery, *args: Any) -> Any:
        windows.append(query)
        return export_window(query, *args)

    monkeypatch.setattr(store, "_export_window", spy)
    monkeypatch.setattr(DuckDBStore, "WINDOW_MAX_BYTES", 16 * 1024)
    monkeypatch.setattr(DuckDBStore, "WINDOW_MIN_BYTES", 1024)
    assert b"".join(store.export_lines(ScanQuery(1))) == whole
    # The first window guesses 1 KB a line (16 lines); the next ones fit ~16 KB of real lines.
    line_bytes = len(whole) / 2000
    assert 0.5 * len(whole) / 16384 < len(windows) < 2 * len(whole) / 16384 + 2
    assert windows[0].to_ms is not None and windows[0].from_ms is None
    assert line_bytes < 400


def test_export_windows_fit_the_memory_limit(tmp_path: Path) -> None:
    small = DuckDBStore(tmp_path / "small.duckdb", memory_limit="96MB")
    try:
        assert 20 * 1024**2 < small._window_budget() < 24 * 1024**2  # a quarter of 91.5 MiB
    finally:
        small.close()
