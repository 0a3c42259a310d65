"""The embedded default store: one DuckDB file, one writer thread, group commit.

Deduplication is exact and cheap: each event's key (project, event, distinct_id, time,
$insert_id) is hashed inside DuckDB to a 128-bit number that is the table's only primary
key, and a conflicting insert replaces the stored row, so the most recently ingested copy
wins. Fields are length-prefixed before hashing, so two different keys can only share a
hash by an MD5 collision of 128 bits (about one in 10^20 for a billion events), not by any
arrangement of the fields. One narrow key costs a fraction of a five-column primary key.

Durability: a batch's future resolves only after DuckDB's COMMIT has returned, and DuckDB
syncs its write-ahead log before a commit returns. Automatic checkpoints are kept out of the
request path (they would stall inserts); the writer checkpoints when idle or when the log
grows past a bound.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from eventkeep.errors import RecordError
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.profiles import ProfileUpdate, apply_checked
from eventkeep.store.base import ScanQuery, StoreUnavailable
from eventkeep.store.group_commit import GroupCommitter
from eventkeep.store.writes import ProfileWork, WriteItem, queue_profile_updates, split_writes

log = logging.getLogger("eventkeep.store.duckdb")

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS eventkeep_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS events (
    key UHUGEINT PRIMARY KEY,
    project_id INTEGER NOT NULL,
    event VARCHAR NOT NULL,
    distinct_id VARCHAR NOT NULL,
    time_ms BIGINT NOT NULL,
    insert_id VARCHAR NOT NULL,
    ingested_ms BIGINT NOT NULL,
    properties VARCHAR NOT NULL
);
"""

# strlen() prefixes make the concatenation injective: no two keys produce the same text.
KEY_SQL = (
    "md5_number(concat_ws(chr(0), project_id::VARCHAR, strlen(event)::VARCHAR, event, "
    "strlen(distinct_id)::VARCHAR, distinct_id, time_ms::VARCHAR, insert_id))"
)

INSERT_SQL = f"""
INSERT INTO events
SELECT {KEY_SQL}, project_id, event, distinct_id, time_ms, insert_id, $ingested_ms, properties
FROM incoming
ON CONFLICT (key) DO UPDATE SET
    properties = excluded.properties,
    ingested_ms = excluded.ingested_ms
"""

# User and group profiles (spec §4): `kind` is "user" or "group:<group key>"; `properties`
# is the profile's JSON object. Written only by the writer thread, which reads, applies and
# writes back inside one transaction, so concurrent requests never lose an update.
PROFILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    project_id INTEGER NOT NULL,
    kind VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    properties VARCHAR NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (project_id, kind, id)
);
"""

_PROFILE_KEYS_ARROW = pa.schema(
    [("project_id", pa.int32()), ("kind", pa.string()), ("id", pa.string())]
)


WAL_CHECKPOINT_IDLE_BYTES = 16 * 1024 * 1024
WAL_CHECKPOINT_FORCE_BYTES = 512 * 1024 * 1024


class DuckDBStore:
    def __init__(self, path: Path, *, memory_limit: str | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._wal_path = Path(str(path) + ".wal")
        try:
            self._con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            raise StoreUnavailable(
                f"cannot open {path}: {exc}. Is another eventkeep process using this data directory?"
            ) from exc
        self._con.execute("SET checkpoint_threshold = '16GB'")
        if memory_limit:
            self._con.execute(f"SET memory_limit = '{memory_limit}'")
        self._con.execute(SCHEMA)
        self._con.execute(PROFILES_SCHEMA)
        self._con.execute(
            "INSERT INTO eventkeep_meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            [str(SCHEMA_VERSION)],
        )
        self._read_lock = threading.Lock()
        # One writer for events and profiles, so their transactions never interleave.
        self._writer: GroupCommitter[WriteItem] = GroupCommitter(
            self._commit_any, idle=self._checkpoint_if_idle, name="eventkeep-duckdb-writer"
        )

    # -- writing -------------------------------------------------------------------------

    async def append(self, project_id: int, batch: ValidBatch) -> None:
        if len(batch) == 0:
            return
        await self._writer.append((project_id, batch), len(batch))

    def append_sync(self, project_id: int, batch: ValidBatch) -> None:
        """For tools outside the event loop (tests, the CLI)."""
        if len(batch):
            self._writer.submit((project_id, batch), len(batch)).result()

    def _commit(self, items: list[tuple[int, ValidBatch]]) -> None:
        con = self._con
        ingested = {"ingested_ms": int(time.time() * 1000)}
        con.execute("BEGIN TRANSACTION")
        try:
            con.register("incoming", _rows_to_insert(items))
            con.execute(INSERT_SQL, ingested)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("incoming")
        if self._wal_size() > WAL_CHECKPOINT_FORCE_BYTES:
            self._checkpoint()

    def _commit_any(self, items: list[WriteItem]) -> None:
        """Events commit as before; profile work follows in its own transaction.

        A failed event commit fails the whole group (nothing of it is committed); a failed
        profile commit is reported to its own requests only, since the events are durable.
        """
        events, profiles = split_writes(items)
        if events:
            self._commit(events)
        if profiles:
            self._commit_profiles(profiles)

    # -- profiles ------------------------------------------------------------------------

    async def update_profiles(
        self, project_id: int, updates: Sequence[ProfileUpdate]
    ) -> list[RecordError]:
        return await queue_profile_updates(self._writer, project_id, updates)

    def _commit_profiles(self, works: list[ProfileWork]) -> None:
        """Read, apply in queue order, write back: one transaction for every waiting request."""
        con = self._con
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                self._apply_profile_work(works)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except Exception as exc:
            log.exception("profile commit of %d requests failed", len(works))
            for work in works:
                work.errors.clear()
                work.failure = exc
            return
        if self._wal_size() > WAL_CHECKPOINT_FORCE_BYTES:
            self._checkpoint()

    def _apply_profile_work(self, works: list[ProfileWork]) -> None:
        con = self._con
        keys = list(
            dict.fromkeys(
                (work.project_id, update.kind, update.profile_id)
                for work in works
                for update in work.updates
            )
        )
        state: dict[tuple[int, str, str], dict[str, Any] | None] = dict.fromkeys(keys)
        con.register("wanted_profiles", _profile_keys_table(keys))
        try:
            rows = con.execute(
                "SELECT p.project_id, p.kind, p.id, p.properties FROM profiles p "
                "JOIN wanted_profiles w USING (project_id, kind, id)"
            ).fetchall()
        finally:
            con.unregister("wanted_profiles")
        existed = set()
        for project_id, kind, profile_id, properties in rows:
            key = (int(project_id), str(kind), str(profile_id))
            state[key] = msgspec.json.decode(properties)
            existed.add(key)
        changed: set[tuple[int, str, str]] = set()
        for work in works:
            for update in work.updates:
                key = (work.project_id, update.kind, update.profile_id)
                result, error = apply_checked(state[key], update)
                if error is not None:
                    work.errors.append(error)
                    continue
                state[key] = result
                changed.add(key)
        upserts = [key for key in keys if key in changed and state[key] is not None]
        deletes = [key for key in keys if key in changed and state[key] is None and key in existed]
        now_ms = int(time.time() * 1000)
        if upserts:
            table = _profile_keys_table(upserts)
            table = table.append_column(
                "properties", pa.array([_encode_profile(state[k]) for k in upserts], pa.string())
            ).append_column("updated_ms", pa.array([now_ms] * len(upserts), pa.int64()))
            con.register("incoming_profiles", table)
            try:
                con.execute(
                    "INSERT INTO profiles SELECT project_id, kind, id, properties, updated_ms "
                    "FROM incoming_profiles ON CONFLICT (project_id, kind, id) DO UPDATE SET "
                    "properties = excluded.properties, updated_ms = excluded.updated_ms"
                )
            finally:
                con.unregister("incoming_profiles")
        if deletes:
            con.register("deleted_profiles", _profile_keys_table(deletes))
            try:
                con.execute(
                    "DELETE FROM profiles USING deleted_profiles d WHERE profiles.project_id = "
                    "d.project_id AND profiles.kind = d.kind AND profiles.id = d.id"
                )
            finally:
                con.unregister("deleted_profiles")

    def get_profile(self, project_id: int, kind: str, profile_id: str) -> dict[str, Any] | None:
        cursor = self._con.cursor()
        try:
            row = cursor.execute(
                "SELECT properties FROM profiles WHERE project_id = ? AND kind = ? AND id = ?",
                [project_id, kind, profile_id],
            ).fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        profile: dict[str, Any] = msgspec.json.decode(row[0])
        return profile

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_path).st_size
        except FileNotFoundError:
            return 0

    def _checkpoint(self) -> None:
        started = time.monotonic()
        self._con.execute("CHECKPOINT")
        log.info("checkpoint took %.3fs", time.monotonic() - started)

    def _checkpoint_if_idle(self) -> None:
        if self._wal_size() > WAL_CHECKPOINT_IDLE_BYTES:
            self._checkpoint()

    # -- reading -------------------------------------------------------------------------

    def _filter(self, query: ScanQuery) -> tuple[str, list[Any]]:
        clauses = ["project_id = ?"]
        params: list[Any] = [query.project_id]
        if query.from_ms is not None:
            clauses.append("time_ms >= ?")
            params.append(query.from_ms)
        if query.to_ms is not None:
            clauses.append("time_ms < ?")
            params.append(query.to_ms)
        if query.events is not None:
            clauses.append("list_contains(?, event)")
            params.append(list(query.events))
        if query.where is not None:
            from eventkeep.query.duckdb_sql import compile_where

            sql, where_params = compile_where(query.where)
            clauses.append(f"({sql})")
            params.extend(where_params)
        return " AND ".join(clauses), params

    def count(self, query: ScanQuery) -> int:
        where, params = self._filter(query)
        row = self._con.cursor().execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()
        return int(row[0]) if row else 0

    def export_lines(
        self,
        query: ScanQuery,
        *,
        time_in_ms: bool = False,
        local_time_zone: str | None = None,
        rows_per_chunk: int = 10_000,
        rows_per_window: int = 100_000,
    ) -> Iterator[bytes]:
        """Stream the export in time order, one bounded time window at a time.

        One ORDER BY over a whole export holds every selected row in memory before the
        first leaves (about 0.9 GB for a million events). Windows of about
        `rows_per_window` events, chosen from an hourly histogram, each sort only their own
        rows, so memory stays flat however long the export; filters on `time_ms` are pushed
        into the scan, so the extra queries cost little.
        """
        remaining = query.limit
        for window_from, window_to in self._windows(query, rows_per_window):
            window = replace(query, from_ms=window_from, to_ms=window_to, limit=remaining)
            for chunk in self._export_window(window, time_in_ms, local_time_zone, rows_per_chunk):
                yield chunk
                if remaining is not None:
                    remaining -= chunk.count(b"\n")
            if remaining is not None and remaining <= 0:
                return

    def _windows(self, query: ScanQuery, rows_per_window: int) -> list[tuple[int | None, int | None]]:
        """Consecutive time ranges holding about `rows_per_window` candidate rows each."""
        hour = 3_600_000
        coarse = replace(query, events=None, where=None, limit=None)
        where, params = self._filter(coarse)
        cursor = self._con.cursor()
        try:
            histogram = cursor.execute(
                f"SELECT time_ms // {hour} AS h, count(*) FROM events WHERE {where} GROUP BY h ORDER BY h",
                params,
            ).fetchall()
        finally:
            cursor.close()
        windows: list[tuple[int | None, int | None]] = []
        start: int | None = None
        rows = 0
        for bucket, count in histogram:
            if start is None:
                start = bucket * hour
            rows += count
            if rows >= rows_per_window:
                windows.append((start, (bucket + 1) * hour))
                start, rows = None, 0
        if start is not None:
            windows.append((start, (histogram[-1][0] + 1) * hour))
        # Keep the caller's exact bounds at both ends.
        return [
            (max(lo, query.from_ms) if query.from_ms is not None and lo is not None else lo,
             min(hi, query.to_ms) if query.to_ms is not None and hi is not None else hi)
            for lo, hi in windows
        ]

    def _export_window(
        self, query: ScanQuery, time_in_ms: bool, local_time_zone: str | None, rows_per_chunk: int
    ) -> Iterator[bytes]:
        where, params = self._filter(query)
        time_ms = "time_ms"
        if local_time_zone is not None:
            time_ms = (
                "(time_ms + 1000 * (epoch(timezone(?, to_timestamp(time_ms // 1000))) "
                "- time_ms // 1000)::BIGINT)"
            )
            params = [local_time_zone, *params]
        time_expr = time_ms if time_in_ms else f"({time_ms} // 1000)"
        limit = f" LIMIT {int(query.limit)}" if query.limit is not None else ""
        # Each row is a whole line, newline included, so a batch's string data buffer is
        # exactly the bytes to send: no per-row work in Python.
        sql = f"""
            SELECT '{{"event":' || to_json(event) || ',"properties":{{"time":' || {time_expr}
                || ',"distinct_id":' || to_json(distinct_id)
                || CASE WHEN properties = '{{}}' THEN '}}' ELSE ',' || substr(properties, 2) END
                || '}}' || chr(10) AS line
            FROM events WHERE {where}
            ORDER BY time_ms, insert_id{limit}
        """
        cursor = self._con.cursor()
        try:
            # The relational API streams; execute() would materialise the whole result first.
            reader = cursor.sql(sql, params=params).to_arrow_reader(rows_per_chunk)
            for record_batch in reader:
                if record_batch.num_rows:
                    yield _string_column_bytes(record_batch.column(0))
        finally:
            cursor.close()

    def close(self) -> None:
        self._writer.close()
        try:
            self._checkpoint()
        finally:
            self._con.close()


def _profile_keys_table(keys: list[tuple[int, str, str]]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([k[0] for k in keys], pa.int32()),
            pa.array([k[1] for k in keys], pa.string()),
            pa.array([k[2] for k in keys], pa.string()),
        ],
        schema=_PROFILE_KEYS_ARROW,
    )


def _encode_profile(profile: dict[str, Any] | None) -> str:
    try:
        return msgspec.json.encode(profile).decode()
    except (TypeError, OverflowError, UnicodeEncodeError):  # pragma: no cover - validated
        import json

        return json.dumps(profile, ensure_ascii=False)


def _string_column_bytes(column: pa.Array) -> bytes:
    """The concatenated values of a string array without nulls, straight from its buffers."""
    if pa.types.is_string(column.type) or pa.types.is_binary(column.type):
        width = 4
    elif pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type):
        width = 8
    else:
        return "".join(column.to_pylist()).encode()
    offsets_buffer, data_buffer = column.buffers()[1], column.buffers()[2]
    first = column.offset * width
    last = (column.offset + len(column)) * width
    start = int.from_bytes(offsets_buffer[first : first + width], "little", signed=True)
    end = int.from_bytes(offsets_buffer[last : last + width], "little", signed=True)
    return data_buffer[start:end].to_pybytes()


def _rows_to_insert(items: list[tuple[int, ValidBatch]]) -> pa.Table:
    """The waiting batches as one Arrow table, with one row per key: the latest copy.

    DuckDB's ON CONFLICT may apply either of two rows with the same key in one statement,
    so repeats are resolved here. The batches are joined without copying; only rows whose
    $insert_id occurs twice (found by hashing the column in Arrow) are compared key by key.
    """
    tables = [_with_project_id(project_id, batch.rows) for project_id, batch in items]
    rows = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    insert_ids = rows.column("insert_id")
    counts = pc.value_counts(insert_ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return rows
    candidates = pc.indices_nonzero(pc.is_in(insert_ids, value_set=repeated)).to_pylist()
    subset = rows.take(candidates)
    keys = zip(*(subset.column(name).to_pylist() for name in _KEY_COLUMNS), strict=True)
    latest = {key: row for row, key in zip(candidates, keys, strict=True)}
    superseded = sorted(set(candidates) - set(latest.values()))
    if not superseded:
        return rows
    drop = pc.is_in(pa.array(range(rows.num_rows), pa.int64()), value_set=pa.array(superseded, pa.int64()))
    return rows.filter(pc.invert(drop))


_KEY_COLUMNS = ("project_id", "event", "distinct_id", "time_ms", "insert_id")


def _with_project_id(project_id: int, rows: pa.Table) -> pa.Table:
    return rows.append_column("project_id", pa.repeat(pa.scalar(project_id, pa.int32()), rows.num_rows))
