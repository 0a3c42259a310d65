"""The DuckDB store on real files: dedup (latest wins), atomic batches, persistence."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.profiles import validate_updates
from eventkeep.ingest.validate import IngestContext, validate_events
from eventkeep.store.base import ScanQuery, StoreUnavailable
from eventkeep.store.duckdb import DuckDBStore

NOW_MS = 1_800_000_000_000
CTX = IngestContext("import", NOW_MS, "test")


def ev(insert_id: str, t: int = 1_700_000_000, **props: Any) -> dict[str, Any]:
    return {"event": "e", "properties": {"time": t, "distinct_id": "u", "$insert_id": insert_id, **props}}


def batch(*events: dict[str, Any]) -> ValidBatch:
    result = validate_events(list(events), CTX)
    assert not result.errors
    return result


def lines(store: DuckDBStore, project_id: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for chunk in store.export_lines(ScanQuery(project_id), **kwargs) for line in chunk.splitlines()]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = DuckDBStore(tmp_path / "events.duckdb")
    yield s
    s.close()


def test_latest_copy_wins_within_and_across_commits(store: DuckDBStore) -> None:
    store.append_sync(1, batch(ev("a", v=1), ev("a", v=2), ev("b", v=1)))
    store.append_sync(1, batch(ev("a", v=3)))
    stored = {e["properties"]["$insert_id"]: e["properties"]["v"] for e in lines(store)}
    assert stored == {"a": 3, "b": 1}
    assert store.count(ScanQuery(1)) == 2


def test_projects_do_not_deduplicate_each_other(store: DuckDBStore) -> None:
    store.append_sync(1, batch(ev("a")))
    store.append_sync(2, batch(ev("a")))
    assert store.count(ScanQuery(1)) == 1 and store.count(ScanQuery(2)) == 1


def test_key_fields_cannot_run_into_each_other(store: DuckDBStore) -> None:
    """("ab", "c") and ("a", "bc") are different keys even though they concatenate alike."""
    one = {"event": "ab", "properties": {"time": 1_700_000_000, "distinct_id": "c", "$insert_id": "x"}}
    two = {"event": "a", "properties": {"time": 1_700_000_000, "distinct_id": "bc", "$insert_id": "x"}}
    store.append_sync(1, batch(one, two))
    assert store.count(ScanQuery(1)) == 2


def test_events_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "events.duckdb"
    first = DuckDBStore(path)
    first.append_sync(1, batch(ev("a", note="ünïcødé ✓"), ev("b", big=2**80)))
    first.close()
    second = DuckDBStore(path)
    try:
        stored = {e["properties"]["$insert_id"]: e["properties"] for e in lines(second)}
        assert stored["a"]["note"] == "ünïcødé ✓"
        assert stored["b"]["big"] == 2**80
    finally:
        second.close()


def test_a_resent_event_replaces_its_copy_stored_before_a_restart(tmp_path: Path) -> None:
    """The key index lives in memory: a reopened store rebuilds it from the table, whether
    the first write comes before or after the writer's first idle second."""
    path = tmp_path / "events.duckdb"
    first = DuckDBStore(path)
    first.append_sync(1, batch(ev("a", v=1), ev("b", v=1)))
    first.close()
    for version, wait in ((2, False), (3, True)):
        store = DuckDBStore(path)
        try:
            if wait:
                deadline = time.monotonic() + 10
                while store._keys is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert store._keys is not None, "the index is built while the writer is idle"
            store.append_sync(1, batch(ev("a", v=version), ev(f"new-{version}")))
            stored = {e["properties"]["$insert_id"]: e["properties"].get("v") for e in lines(store)}
            assert stored["a"] == version and stored["b"] == 1
            assert store.count(ScanQuery(1)) == 2 + (version - 1)
        finally:
            store.close()


def test_the_index_is_built_at_idle_only_once_no_export_runs(tmp_path: Path) -> None:
    """A server started to export does not hold the export's memory and the index's at
    once: the writer builds the index at an idle second without an export."""
    path = tmp_path / "events.duckdb"
    first = DuckDBStore(path)
    first.append_sync(1, batch(ev("a"), ev("b")))
    first.close()
    store = DuckDBStore(path)
    try:
        chunks = store.export_lines(ScanQuery(1))
        next(chunks)  # the export is under way, and holds its place
        time.sleep(2.5)  # two of the writer's idle seconds
        assert store._keys is None
        list(chunks)  # the export ends
        deadline = time.monotonic() + 10
        while store._keys is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store._keys is not None and store._keys.count == 2
    finally:
        store.close()


SCHEMA_V1_EVENTS = """
CREATE TABLE events_v1 (
    key UHUGEINT PRIMARY KEY, project_id INTEGER NOT NULL, event VARCHAR NOT NULL,
    distinct_id VARCHAR NOT NULL, time_ms BIGINT NOT NULL, insert_id VARCHAR NOT NULL,
    ingested_ms BIGINT NOT NULL, properties VARCHAR NOT NULL
)"""


def test_a_file_of_schema_1_is_upgraded_and_keeps_deduplicating(tmp_path: Path) -> None:
    """Schema 1 kept each event's MD5 key as a primary key; schema 2 numbers the rows and
    keeps the index in memory. The events, and their deduplication, carry over."""
    from eventkeep.store.duckdb import KEY_SQL

    path = tmp_path / "events.duckdb"
    store = DuckDBStore(path)
    store.append_sync(1, batch(ev("a", v=1), ev("b", v=1)))
    store.append_sync(2, batch(ev("a", v=1)))
    store.close()
    con = duckdb.connect(str(path))  # rewrite the file as version 1 wrote it
    con.execute(SCHEMA_V1_EVENTS)
    con.execute(f"""INSERT INTO events_v1 SELECT {KEY_SQL}, project_id, event, distinct_id, time_ms,
                    insert_id, ingested_ms, properties FROM events""")
    con.execute("DROP TABLE events; ALTER TABLE events_v1 RENAME TO events")
    con.execute("UPDATE eventkeep_meta SET value = '1' WHERE key = 'schema_version'")
    con.close()

    upgraded = DuckDBStore(path)
    try:
        [(version,)] = upgraded._con.cursor().execute(
            "SELECT value FROM eventkeep_meta WHERE key = 'schema_version'").fetchall()
        assert version == "2"
        upgraded.append_sync(1, batch(ev("a", v=2), ev("c", v=2)))
        upgraded.append_sync(2, batch(ev("a", v=2)))
        assert {e["properties"]["$insert_id"]: e["properties"]["v"] for e in lines(upgraded)} == {"a": 2, "b": 1, "c": 2}
        assert [e["properties"]["v"] for e in lines(upgraded, 2)] == [2]
    finally:
        upgraded.close()


def test_a_file_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.duckdb"
    DuckDBStore(path).close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE eventkeep_meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreUnavailable, match="newer eventkeep"):
        DuckDBStore(path)


def test_strings_are_stored_in_zstd_and_a_checkpoint_leaves_the_threads_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.duckdb"
    store = DuckDBStore(path)
    try:
        threads = store._con.cursor().execute("SELECT current_setting('threads')").fetchone()
        after_checkpoints: list[Any] = []
        checkpoint = store._checkpoint  # runs on one thread, so as not to starve the workers

        def checkpoint_then_look() -> None:  # on the writer thread, which owns the connection
            checkpoint()
            after_checkpoints.append(store._con.execute("SELECT current_setting('threads')").fetchone())

        monkeypatch.setattr(store, "_checkpoint", checkpoint_then_look)
        monkeypatch.setattr("eventkeep.store.duckdb.WAL_CHECKPOINT_FORCE_BYTES", 0)  # after every commit
        store.append_sync(1, batch(*(ev(f"id-{i}", page=f"/p/{i}" * 8) for i in range(3000))))
        deadline = time.monotonic() + 20
        while not after_checkpoints and time.monotonic() < deadline:
            time.sleep(0.01)
        assert after_checkpoints and all(seen == threads for seen in after_checkpoints)
    finally:
        store.close()
    with duckdb.connect(str(path), read_only=True) as con:
        methods = dict(con.execute(
            "SELECT column_name, list(DISTINCT compression) FROM pragma_storage_info('events') "
            "WHERE segment_type = 'VARCHAR' GROUP BY ALL"
        ).fetchall())
    assert methods["properties"] == ["ZSTD"], methods


def test_writes_go_on_while_exports_keep_duckdb_from_checkpointing(
    store: DuckDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB at times refuses to checkpoint while exports run ("other write transactions
    active"); that must fail neither the writer's commits nor the profile updates that share
    its group: the checkpoint waits for a later commit."""
    store.append_sync(1, batch(*(ev(f"old-{i}", t=1_700_000_000 + i) for i in range(50_000))))
    monkeypatch.setattr("eventkeep.store.duckdb.WAL_CHECKPOINT_FORCE_BYTES", 0)  # after every commit
    done = threading.Event()
    exported: list[int] = []

    def export_repeatedly() -> None:
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            exported.append(sum(chunk.count(b"\n") for chunk in store.export_lines(ScanQuery(1))))

    reader = threading.Thread(target=export_repeatedly)
    reader.start()
    try:
        for round_ in range(20):
            store.append_sync(1, batch(*(ev(f"r{round_}-{i}", t=1_700_000_000 + i) for i in range(5_000))))
            update = validate_updates([{"$distinct_id": "u", "$add": {"n": 1}}], "engage", NOW_MS)
            assert asyncio.run(store.update_profiles(1, update.updates)) == []
    finally:
        done.set()
        reader.join()
    profile = store.get_profile(1, "user", "u")
    assert profile is not None and profile["n"] == 20
    assert store.count(ScanQuery(1)) == 150_000
    assert len(exported) >= 2 and all(count >= 50_000 for count in exported)


def test_export_orders_by_time_and_filters_by_range_and_name(store: DuckDBStore) -> None:
    store.append_sync(1, batch(ev("c", t=1_700_000_300), ev("a", t=1_700_000_100), ev("b", t=1_700_000_200)))
    assert [e["properties"]["$insert_id"] for e in lines(store)] == ["a", "b", "c"]
    ranged = [json.loads(x) for chunk in store.export_lines(ScanQuery(1, from_ms=1_700_000_150_000, to_ms=1_700_000_300_000)) for x in chunk.splitlines()]
    assert [e["properties"]["$insert_id"] for e in ranged] == ["b"]
    assert store.count(ScanQuery(1, events=("other",))) == 0
    assert store.count(ScanQuery(1, events=("e", "other"))) == 3


def test_export_time_in_seconds_or_milliseconds(store: DuckDBStore) -> None:
    store.append_sync(1, batch(ev("a", t=1_700_000_000_123)))
    assert lines(store)[0]["properties"]["time"] == 1_700_000_000
    assert lines(store, time_in_ms=True)[0]["properties"]["time"] == 1_700_000_000_123


def test_export_strings_are_escaped_correctly(store: DuckDBStore) -> None:
    name = 'quote " backslash \\ newline \n tab \t nul \x00 emoji 😀'
    store.append_sync(1, batch({"event": name, "properties": {"time": 1_700_000_000, "distinct_id": name, "$insert_id": "a"}}))
    [e] = lines(store)
    assert e["event"] == name and e["properties"]["distinct_id"] == name


def test_a_failing_apply_loses_nothing_and_is_applied_at_the_next_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events are acknowledged once in the ingest log; if applying them to DuckDB fails,
    the store refuses more work, and the logged events are applied when it is reopened."""
    import eventkeep.store.duckdb as module

    store = DuckDBStore(tmp_path / "events.duckdb")
    store.append_sync(1, batch(ev("before")))
    monkeypatch.setattr(module, "INSERT_SQL", module.INSERT_SQL + " RETURNING no_such_column")
    store.append_sync(1, batch(ev("a"), ev("b")))  # durable in the log: acknowledged
    with pytest.raises(StoreUnavailable, match="applying logged events failed"):
        store.count(ScanQuery(1))
    with pytest.raises(StoreUnavailable):
        store.append_sync(1, batch(ev("c")))
    store.close()
    monkeypatch.undo()
    reopened = DuckDBStore(tmp_path / "events.duckdb")
    try:
        assert sorted(line["properties"]["$insert_id"] for line in lines(reopened)) == ["a", "b", "before"]
        reopened.append_sync(1, batch(ev("c"), ev("a", v=2)))  # "a" is found, not doubled
        assert reopened.count(ScanQuery(1)) == 4
    finally:
        reopened.close()


def test_the_ingest_log_recovers_acknowledged_batches_and_skips_a_torn_tail(tmp_path: Path) -> None:
    from eventkeep.store.duckdb import _with_project_ids
    from eventkeep.store.ingest_log import IngestLog

    directory = tmp_path / "log"
    log = IngestLog(directory, segment_bytes=1)  # a segment per entry
    first = _with_project_ids([(1, batch(ev("x1"), ev("x2")))])
    second = _with_project_ids([(2, batch(ev("y1")))])
    assert (log.append(first), log.append(second)) == (1, 2)
    log.close()
    segments = sorted(directory.glob("*.log"))
    assert len(segments) == 2
    with open(segments[-1], "ab") as tail:
        tail.write(b"EKL1\x03" + b"\x00" * 40)  # a crash in the middle of writing entry 3

    reopened = IngestLog(directory)
    assert reopened.last_seq == 2
    assert [(seq, rows.column("insert_id").to_pylist()) for seq, rows in reopened.entries_after(0)] == [
        (1, ["x1", "x2"]), (2, ["y1"])
    ]
    assert [seq for seq, _ in reopened.entries_after(1)] == [2]
    assert reopened.append(first) == 3  # in a new segment, never after the torn bytes
    assert [seq for seq, _ in IngestLog(directory).entries_after(0)] == [1, 2, 3]
    reopened.release(2)
    assert len(list(directory.glob("*.log"))) == 1
    assert [seq for seq, _ in IngestLog(directory).entries_after(0)] == [3]


def test_windowed_export_keeps_global_order_bounds_and_limit(store: DuckDBStore) -> None:
    hour = 3600
    base = 1_700_000_000 - 1_700_000_000 % hour
    times = [base + h * hour + s for h in range(6) for s in (7, 3, 5)]  # three events in each of six hours
    store.append_sync(1, batch(*(ev(f"i{i}", t=t) for i, t in enumerate(reversed(times)))))

    def exported(query: ScanQuery, **kwargs: Any) -> list[int]:
        return [json.loads(line)["properties"]["time"] for chunk in store.export_lines(query, rows_per_window=4, **kwargs)
                for line in chunk.splitlines()]

    assert exported(ScanQuery(1)) == sorted(times)
    assert exported(ScanQuery(1, limit=8)) == sorted(times)[:8]
    assert exported(ScanQuery(1, limit=0)) == []
    inside = ScanQuery(1, from_ms=(base + hour + 4) * 1000, to_ms=(base + 4 * hour + 6) * 1000)
    assert exported(inside) == [t for t in sorted(times) if base + hour + 4 <= t < base + 4 * hour + 6]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1, 2**64 - 1]), st.sampled_from([0, 7, 2**63])), max_size=40))
def test_repeats_within_a_group_leave_only_the_latest_copy(keys: list[tuple[int, int]]) -> None:
    """Keys as (high, low) halves from a few values, so that halves repeat alone and together;
    seqs shuffled, as DuckDB may return the rows in any order."""
    from eventkeep.store.duckdb import superseded_in_batch

    seqs = list(range(1, len(keys) + 1))
    random.Random(len(keys)).shuffle(seqs)
    latest: dict[tuple[int, int], int] = {}
    for key, seq in zip(keys, seqs, strict=True):
        latest[key] = max(seq, latest.get(key, 0))
    mask = superseded_in_batch(
        np.array([k[0] for k in keys], np.uint64), np.array([k[1] for k in keys], np.uint64),
        np.array(seqs, np.int64),
    )
    expected = [latest[key] != seq for key, seq in zip(keys, seqs, strict=True)]
    assert (mask is None and not any(expected)) or (mask is not None and mask.tolist() == expected)


def test_one_commit_of_many_batches_keeps_the_latest_copy_of_each_key(store: DuckDBStore) -> None:
    """Batches waiting together share one INSERT: of repeats, the latest copy is stored."""
    first = batch(ev("a", v=1), ev("b", v=1), ev("same-id", t=1_700_000_000, v=1))
    second = batch(ev("a", v=2), ev("c", v=2), ev("same-id", t=1_700_000_001, v=2), ev("c", v=3))
    third = batch(ev("a", v=4))
    # Through the store: logged together, applied together, latest wins.
    futures = [store._logger.submit((5, b), len(b)) for b in (first, second, third)]
    for future in futures:
        future.result()
    stored = [(line["properties"]["$insert_id"], line["properties"]["time"], line["properties"]["v"])
              for line in lines(store, 5)]
    assert sorted(stored) == [("a", 1_700_000_000, 4), ("b", 1_700_000_000, 1), ("c", 1_700_000_000, 3),
                              ("same-id", 1_700_000_000, 1), ("same-id", 1_700_000_001, 2)]
    futures = [store._logger.submit((6, b), len(b)) for b in (first, first)]  # a group of repeats only
    for future in futures:
        future.result()
    assert sorted(line["properties"]["$insert_id"] for line in lines(store, 6)) == ["a", "b", "same-id"]


def test_a_failed_log_write_is_refused_and_later_entries_stay_recoverable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way (a full disk) leaves a torn entry: the request fails, and
    what is acknowledged afterwards must not sit behind the torn bytes."""
    import os

    import eventkeep.store.ingest_log as ingest_log

    store = DuckDBStore(tmp_path / "events.duckdb")
    store.append_sync(1, batch(ev("first")))
    real_write = os.write

    def half_write(fd: int, data: Any) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ingest_log.os, "write", half_write)
    with pytest.raises(StoreUnavailable, match="No space left"):
        store.append_sync(1, batch(ev("refused")))
    monkeypatch.undo()
    store.append_sync(1, batch(ev("applied")))
    # Then a crash between logging and applying: the writer never sees the next batch.
    from concurrent.futures import Future

    never_applied: Future[None] = Future()
    never_applied.set_result(None)
    monkeypatch.setattr(store._writer, "submit", lambda *args, **kwargs: never_applied)
    store.append_sync(1, batch(ev("after")))
    store._logger.close()
    store._writer.close()
    store._con.close()
    store._log.close()

    reopened = DuckDBStore(tmp_path / "events.duckdb")
    try:
        assert sorted(line["properties"]["$insert_id"] for line in lines(reopened)) == ["after", "applied", "first"]
    finally:
        reopened.close()


def test_logging_slows_to_the_writers_pace_in_proportion_to_the_backlog(
    store: DuckDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventkeep.store import duckdb as duckdb_store

    store.append_sync(1, batch(ev("a"), ev("b")))
    assert len(lines(store)) == 2  # applied
    assert store._seconds_per_row > 0  # measured by the writer's commit
    slept: list[float] = []
    monkeypatch.setattr(duckdb_store.time, "sleep", slept.append)
    store._seconds_per_row = 1e-6
    store._unapplied_rows = duckdb_store.PACE_FROM_ROWS  # at the threshold: no wait
    store._pace(2000)
    store._unapplied_rows = 2 * duckdb_store.PACE_FROM_ROWS  # the writer's own pace
    store._pace(2000)
    store._unapplied_rows = 3 * duckdb_store.PACE_FROM_ROWS  # further behind: slower still
    store._pace(2000)
    store._unapplied_rows = 0
    assert slept == pytest.approx([2000e-6, 4000e-6])


def test_the_writer_gathers_rows_yet_a_read_sees_every_acknowledged_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acknowledged events wait in the log while the writer gathers a row group's worth;
    a read that must see them makes the writer apply them at once."""
    from eventkeep.store import duckdb as duckdb_store

    monkeypatch.setattr(duckdb_store, "GATHER_SECONDS", 60.0)
    store = DuckDBStore(tmp_path / "events.duckdb")
    try:
        store.append_sync(1, batch(ev("a"), ev("b")))
        time.sleep(0.5)
        assert store._applied_seq < store._log.last_seq  # logged, held back by the writer
        started = time.monotonic()
        assert sorted(e["properties"]["$insert_id"] for e in lines(store)) == ["a", "b"]
        assert time.monotonic() - started < 10  # not the 60 s of gathering
    finally:
        store.close()


def test_clustering_steps_wait_for_writes_to_pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eventkeep.store import duckdb as duckdb_store
    from eventkeep.store import duckdb_cluster

    steps: list[float] = []
    monkeypatch.setattr(duckdb_store, "CLUSTER_AFTER_QUIET_S", 2.5)
    monkeypatch.setattr(duckdb_cluster.TimeClustering, "run_idle", lambda self, con, checkpoint: steps.append(time.monotonic()))
    store = DuckDBStore(tmp_path / "events.duckdb")
    try:
        store.append_sync(1, batch(ev("a")))
        lines(store)  # applied
        written = store._last_write
        time.sleep(1.8)  # the writer's idle second has passed, the quiet period has not
        assert steps == []
        deadline = time.monotonic() + 10
        while not steps and time.monotonic() < deadline:
            time.sleep(0.05)
        assert steps and steps[0] - written >= 2.5
    finally:
        store.close()


def test_a_requested_clustering_pass_does_not_wait_for_the_quiet_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventkeep.store import duckdb as duckdb_store

    monkeypatch.setattr(duckdb_store, "CLUSTER_AFTER_QUIET_S", 600.0)
    store = DuckDBStore(tmp_path / "events.duckdb")
    try:
        store.append_sync(1, batch(*(ev(f"e{i}", t=1_700_000_000 + (i * 7919) % 5000) for i in range(3000))))
        lines(store)
        assert store.cluster(timeout=8) >= 0  # at the writer's next idle second
    finally:
        store.close()
