"""Idle-time clustering of the DuckDB store's events by time.

Why: an export reads one time window at a time (see `DuckDBStore.export_lines`). DuckDB
skips row groups by their min/max `time_ms` and, inside a row group, decodes the wide
columns (above all `properties`) only for the vectors of 2,048 rows that hold a matching
row. Events that arrive in time order are stored that way already. Events imported out of
order (a backfill; the export benchmark's events, spread at random over 30 days) put a few
rows of every window into every vector, so every window decodes the whole table: 5M such
events exported at 287k events/s (server with `--memory-limit 128MB`), against 645k/s once
the same rows are stored in time order.

What: once no events have been written for 30 s (`CLUSTER_AFTER_QUIET_S` in duckdb.py),
at the writer's next idle second, it looks at how the rows of each time
range are spread over the table and moves one scattered range (up to `step_rows()` rows)
to the end of the table, sorted by (time_ms, insert_id), in one transaction: the rows are
copied to a temporary table, deleted, and inserted again with the same `seq`s. A range is
scattered when the vectors whose [min, max] time overlaps its histogram buckets are more
than `SCATTER_FACTOR` times as many as its rows need. Ranges go in time order, so after a
pass the moved rows are stored in time order; ranges already laid out well stay put.

Cost and bounds (5M benchmark events, 2 cores):
- Steps run on the writer thread, between its transactions, so they never race a write
  and deduplication stays exact: a moved row keeps its `seq`, which the key index points
  at, so a later copy of the event finds it as before. Events are acknowledged once in the
  ingest log, so a step (about 2 s for 250k rows) delays only their application. Steps
  run only after 30 s without writes and never alongside an export (both would
  compete for the memory limit and the cores): an export that starts during a step waits
  for it to end.
- Each moved row costs about 8-12 µs (sort, delete, insert, index), once: 5M scattered
  events took 60 s of idle time, 1M took 8 s (loading them took 100 s and 20 s). Steps
  of two row groups or more are written straight into the database file instead of
  through DuckDB's WAL, three times cheaper than small steps (1M events: 7 s against
  23 s); the step is sized from DuckDB's memory limit, which holds its sort and its copy.
- Applying new events to a clustered table is as fast as before (200k new events into 5M
  stored: 167k/s clustered, 150k/s not).
- Planning reads only `time_ms` and row ids (~0.1 s for 5M events), at most once a minute
  and only when the row count or the latest `ingested_ms` changed since a plan last found
  nothing to do.
- Moved rows leave deleted slots until a checkpoint vacuums them: the pass's last step
  checkpoints, before any export may start. The file grows by about the moved data
  meanwhile (1.4 GB to 2.3 GB for 5M events); DuckDB reuses the freed blocks for later
  writes but never shrinks the file.
- A failing step (for instance: a memory limit too small for the deduplication index,
  which fails every write) ends the pass; the next try is ten minutes later.

`DuckDBStore.cluster()` runs a whole pass at once, for tools and benchmarks.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("eventkeep.store.duckdb")

VECTOR_ROWS = 2048
SCATTER_FACTOR = 4
MIN_STEP_ROWS = 20_000
MAX_STEP_ROWS = 250_000
# Buffer-pool bytes that a moved row may take (its sort and its temporary copy), generously.
STEP_BYTES_PER_ROW = 2_000
PLAN_INTERVAL_S = 60.0
RETRY_AFTER_FAILURE_S = 600.0
MAX_BUCKET_MS = 3_600_000

_UNITS = {"bytes": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


@contextmanager
def transaction(con: Any) -> Iterator[None]:
    """BEGIN, then COMMIT if the block ends normally, ROLLBACK if it raises (and re-raise)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def memory_limit_bytes(con: Any) -> int | None:
    """DuckDB's memory limit in bytes, read from its display form ('122.0 MiB', '18.8 GiB')."""
    [row] = con.execute("SELECT current_setting('memory_limit')").fetchall()
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(row[0])) if row else None
    if not match or match.group(2).lower() not in _UNITS:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def step_rows(con: Any) -> int:
    """Rows per step: half the memory limit's worth, within [20k, 250k]."""
    limit = memory_limit_bytes(con)
    if limit is None:
        return MIN_STEP_ROWS
    return max(MIN_STEP_ROWS, min(MAX_STEP_ROWS, limit // 2 // STEP_BYTES_PER_ROW))


def bucket_ms(span_ms: int, rows: int, target_rows: int) -> int:
    """A histogram bucket width holding about target_rows / 8 rows: between 1 s and 1 h."""
    if rows <= 0:
        return MAX_BUCKET_MS
    return max(1000, min(MAX_BUCKET_MS, span_ms * target_rows // (8 * rows)))


def scattered_ranges(con: Any, rows_per_range: int) -> list[tuple[int, int]]:
    """Consecutive time ranges [lo, hi) of about rows_per_range rows, the scattered ones only."""
    # fetchall(): on the writer's connection, a result fetched only in part would keep the
    # writer from registering its next batch.
    [(total, low, high)] = con.execute("SELECT count(*), min(time_ms), max(time_ms) FROM events").fetchall()
    if total <= rows_per_range:
        return []  # exported in one window anyway
    width = bucket_ms(high - low + 1, total, rows_per_range)
    histogram = con.execute(
        f"SELECT (time_ms - {int(low)}) // {width} AS b, count(*) FROM events GROUP BY b ORDER BY b"
    ).fetchall()
    spans = con.execute(
        f"SELECT min(time_ms), max(time_ms) FROM events GROUP BY rowid // {VECTOR_ROWS}"
    ).fetchall()
    starts = sorted(lo for lo, _ in spans)
    ends = sorted(hi for _, hi in spans)

    def touched(lo: int, hi: int) -> int:
        """Vectors whose [min, max] overlaps [lo, hi): what a scan of [lo, hi) decodes."""
        return bisect.bisect_left(starts, hi) - bisect.bisect_left(ends, lo)

    # [first bucket, last bucket, rows, vectors touched, vectors needed], summed per bucket
    groups: list[list[float]] = []
    for bucket, count in histogram:
        lo = low + bucket * width
        cost, need = touched(lo, lo + width), count / VECTOR_ROWS + 2
        if groups and groups[-1][2] + count <= rows_per_range:
            group = groups[-1]
            group[1:] = [bucket, group[2] + count, group[3] + cost, group[4] + need]
        else:
            groups.append([bucket, bucket, count, cost, need])
    return [
        (low + int(first) * width, low + (int(last) + 1) * width)
        for first, last, _, cost, need in groups
        if cost > SCATTER_FACTOR * need
    ]


def move_range(con: Any, lo: int, hi: int) -> int:
    """Rewrite the rows with lo <= time_ms < hi at the end of the table, in time order."""
    params = {"lo": lo, "hi": hi}
    where = "time_ms >= $lo AND time_ms < $hi"
    with transaction(con):
        con.execute(
            "CREATE OR REPLACE TEMP TABLE eventkeep_moving AS "
            f"SELECT * FROM events WHERE {where} ORDER BY time_ms, insert_id",
            params,
        )
        [(deleted,)] = con.execute(f"DELETE FROM events WHERE {where}", params).fetchall()
        [(inserted,)] = con.execute("INSERT INTO events SELECT * FROM eventkeep_moving").fetchall()
        if deleted != inserted:
            raise RuntimeError(f"clustering would insert {inserted} rows for {deleted} deleted")
        con.execute("DROP TABLE eventkeep_moving")
    return int(inserted)


class TimeClustering:
    """One store's clustering state. `run_idle` runs on the store's writer thread only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan: list[tuple[int, int]] = []
        self._not_before = 0.0
        self._settled: tuple[Any, ...] | None = None  # table version when a plan found nothing
        self._requests: list[Future[int]] = []
        self._readers = 0
        self._moving = threading.Lock()  # held by a step (or a full pass) while it runs

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Held by each running export: it waits for a step under way to end, and no step
        starts until every export is done. (Both sorting at once could overrun a small
        memory limit; and an export has the cores to itself.)"""
        with self._moving, self._lock:
            self._readers += 1
        try:
            yield
        finally:
            with self._lock:
                self._readers -= 1

    @property
    def exporting(self) -> bool:
        with self._lock:
            return self._readers > 0

    @property
    def pass_requested(self) -> bool:
        with self._lock:
            return bool(self._requests)

    def request_full_pass(self) -> Future[int]:
        future: Future[int] = Future()
        with self._lock:
            self._requests.append(future)
        return future

    def run_idle(self, con: Any, checkpoint: Callable[[], None]) -> None:
        """Run one step, or a requested full pass; `checkpoint` when a pass has ended (to
        vacuum the moved rows' old slots before an export can start)."""
        with self._moving:
            with self._lock:
                if self._readers:
                    return
                requests, self._requests = self._requests, []
            if requests:
                self._full_pass(con, requests, checkpoint)
            elif self._step(con):
                checkpoint()

    def _step(self, con: Any) -> bool:
        """Move the next scattered range, planning first if needed. True at a pass's end."""
        if not self._plan and time.monotonic() < self._not_before:
            return False
        try:
            if not self._plan and not self._make_plan(con):
                return False
            lo, hi = self._plan.pop(0)
            move_range(con, lo, hi)
        except Exception:
            log.warning("clustering by time failed; next try in %.0f s", RETRY_AFTER_FAILURE_S, exc_info=True)
            self._plan = []
            self._not_before = time.monotonic() + RETRY_AFTER_FAILURE_S
            return False
        return not self._plan

    def _make_plan(self, con: Any) -> bool:
        [version] = con.execute("SELECT count(*), max(ingested_ms) FROM events").fetchall()
        if version == self._settled:
            return False
        started = time.monotonic()
        self._plan = scattered_ranges(con, step_rows(con))
        self._not_before = time.monotonic() + max(PLAN_INTERVAL_S, 100 * (time.monotonic() - started))
        if not self._plan:
            self._settled = version
            return False
        log.info("clustering %d scattered time ranges by time", len(self._plan))
        return True

    def _full_pass(self, con: Any, requests: list[Future[int]], checkpoint: Callable[[], None]) -> None:
        moved = 0
        self._plan = []
        try:
            for lo, hi in scattered_ranges(con, step_rows(con)):
                moved += move_range(con, lo, hi)
            if moved:
                checkpoint()
        except BaseException as exc:
            for future in requests:
                future.set_exception(exc)
            return
        for future in requests:
            future.set_result(moved)


_STATES: weakref.WeakKeyDictionary[object, TimeClustering] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def clustering_of(store: object) -> TimeClustering:
    """The clustering state of a store, made on first use."""
    with _STATES_LOCK:
        state = _STATES.get(store)
        if state is None:
            state = _STATES[store] = TimeClustering()
        return state
