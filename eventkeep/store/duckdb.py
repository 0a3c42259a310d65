"""The embedded default store: one DuckDB file, an ingest log in front, group commit.

Deduplication is exact and cheap. Every stored row has a `seq`, a number the writer gives
it; an in-memory index (eventkeep.store.key_index) maps the MD5 of each event's key
(project, event, distinct_id, time, $insert_id) to the `seq` of its stored row. The writer
hashes a batch's keys in DuckDB, looks them up in the index in one vectorised pass, and
appends the new events to a table with no primary key: DuckDB's index (ART) had cost as
much per row as the rest of the insert. A re-sent event replaces its stored copy (the
row is deleted by its `seq` in the transaction that appends the new copy), so the most
recently ingested copy wins. Fields are length-prefixed before hashing, so two different
keys can only share a hash by an MD5 collision of 128 bits (about one in 10^20 for a
billion events), not by any arrangement of the fields. The index lives in memory only:
after a start it is rebuilt from the table (at the writer's first idle second with no
export running, or before its first write), so what is on disk is always the truth.

Durability: a batch's future resolves once the group it was logged with is synced in the
ingest log (eventkeep.store.ingest_log). One writer thread applies logged groups to DuckDB in
large transactions, recording the last entry applied in the same transaction, and
checkpoints when idle or when DuckDB's own log passes a bound: a checkpoint blocks DuckDB
commits for a second or more under load, and now only the writer waits for it. Reads of
events first wait until everything acknowledged before them is applied.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from eventkeep.errors import RecordError
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.profiles import ProfileUpdate, apply_checked
from eventkeep.store.base import ScanQuery, StoreUnavailable
from eventkeep.store.duckdb_cluster import bucket_ms, clustering_of, memory_limit_bytes, transaction
from eventkeep.store.group_commit import GroupCommitter
from eventkeep.store.ingest_log import IngestLog
from eventkeep.store.key_index import KeyIndex, key_halves
from eventkeep.store.writes import ProfileWork, queue_profile_updates

log = logging.getLogger("eventkeep.store.duckdb")

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS eventkeep_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT NOT NULL,
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


def _key_halves_sql(source: str) -> str:
    """Each row's key as two 64-bit halves, with its seq, for the index: one MD5 per row
    (md5_number_upper and md5_number_lower would hash twice)."""
    return (
        "SELECT (h >> 64)::UBIGINT AS high, (h & 18446744073709551615::UHUGEINT)::UBIGINT AS low, seq "
        f"FROM (SELECT seq, {KEY_SQL} AS h FROM {source})"
    )


INSERT_SQL = """
INSERT INTO events
SELECT seq, project_id, event, distinct_id, time_ms, insert_id, $ingested_ms, properties
FROM incoming
"""

# Version 1 kept the key itself as a UHUGEINT primary key; version 2 numbers the rows.
MIGRATE_FROM_V1_SQL = """
CREATE TABLE events_v2 AS
SELECT rowid + 1 AS seq, project_id, event, distinct_id, time_ms, insert_id, ingested_ms, properties
FROM events;
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
ALTER TABLE events ALTER seq SET NOT NULL;
UPDATE eventkeep_meta SET value = '2' WHERE key = 'schema_version';
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


# A checkpoint blocks commits while it runs, for about 0.3 s per 100 MB of log on the
# development machine (2 cores). When the writer is idle for a second it checkpoints from
# 16 MB; under continuous load it must checkpoint at 128 MB, so that no request waits
# longer than about half a second for one (and a restart replays at most that much log).
WAL_CHECKPOINT_IDLE_BYTES = 16 * 1024 * 1024
WAL_CHECKPOINT_FORCE_BYTES = 128 * 1024 * 1024
# Logged rows not yet applied beyond which logging waits for the writer: room for the
# paced backlog (below), a group the writer is gathering and one it is applying, so that a
# burst seldom reaches it (requests would then wait for a whole apply); and a bound on
# memory (about 400 MB of rows).
MAX_UNAPPLIED_ROWS = 1_000_000
# The key index doubles when a write would fill it past 70 %; at idle moments it doubles
# earlier, past this share, so that under bursty load the doubling rarely holds a write.
IDLE_GROW_SHARE = 0.55

# Past this backlog, logging slows to the writer's own pace (see _pace), so that under
# sustained load the backlog settles near twice this and keeps room for a checkpoint.
# Two groups' worth: from 200,000 (about one group), logging was held back while the
# writer applied one group and gathered the next, and both cores idled (1M events
# imported: 4.6-5.0 s against 4.9-6.0 s, interleaved runs; bench/RESULTS.md, session 10).
PACE_FROM_ROWS = 400_000

# DuckDB writes a transaction's rows straight into the file once it has a whole row group
# (122,880 rows; "optimistic writes"); smaller ones go through its own log and are written
# again by the next checkpoint. So the writer gathers rows, for at most GATHER_SECONDS,
# unless a read waits for them: a quarter less of the writer's time per event, and far
# fewer checkpoints (see bench/RESULTS.md, Session 9). Acknowledgements never wait for it.
ROW_GROUP_ROWS = 122_880
# Half as much again: repeats within a group are dropped before the insert, and a group a
# little short of a row group would go through the log after all.
GATHER_ROWS = ROW_GROUP_ROWS * 3 // 2
GATHER_SECONDS = 2.0
MAX_ROWS_PER_APPLY = 300_000

# A clustering step holds the writer for up to ~2 s (see duckdb_cluster.py). Steps start
# only after this long without writes, not at the writer's first idle second: a backfill's
# pauses, or the gap between two imports, would otherwise start one just before the next
# batches arrive, and they would wait for it.
CLUSTER_AFTER_QUIET_S = 30.0


@dataclass(frozen=True, slots=True)
class _LoggedRows:
    """A durable log entry waiting to be applied: rows with their project ids."""

    seq: int
    rows: pa.Table


_WriterItem = _LoggedRows | ProfileWork


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
        # Strings (the properties above all) in zstd: the file is half the size of DuckDB's
        # default dictionary/FSST choice for this data, and checkpoints, which compress what
        # was written since the last one, take less than half the time.
        self._con.execute("SET force_compression = 'zstd'")
        if memory_limit:
            self._con.execute(f"SET memory_limit = '{memory_limit}'")
        self._con.execute(SCHEMA)
        self._con.execute(PROFILES_SCHEMA)
        self._con.execute(
            "INSERT INTO eventkeep_meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
            [str(SCHEMA_VERSION)],
        )
        try:
            self._migrate()
        except BaseException:
            self._con.close()  # the file stays as it was, free for another version
            raise
        self._read_lock = threading.Lock()
        # Events are acknowledged once in the ingest log (see eventkeep.store.ingest_log);
        # one writer then applies them, and profile updates, to DuckDB, so that their
        # transactions never interleave and a checkpoint stalls nobody but the writer.
        self._log = IngestLog(Path(str(path) + ".ingest-log"))
        self._applied = threading.Condition()
        self._apply_failure: BaseException | None = None
        self._applied_seq = self._read_applied_seq()
        self._log.last_seq = max(self._log.last_seq, self._applied_seq)
        self._seconds_per_row = 0.0  # the writer's recent pace, checkpoints included
        self._last_write = 0.0  # time.monotonic() of the writer's last applied events
        self._keys: KeyIndex | None = None  # the writer's; built before its first write
        self._next_seq = 0
        self._recover()
        self._writer: GroupCommitter[_WriterItem] = GroupCommitter(
            self._commit_any,
            idle=self._checkpoint_if_idle,
            name="eventkeep-duckdb-writer",
            max_rows_per_commit=MAX_ROWS_PER_APPLY,
            max_pending_rows=MAX_UNAPPLIED_ROWS,
            gather_rows=GATHER_ROWS,
            gather_seconds=GATHER_SECONDS,
        )
        self._unapplied: deque[tuple[Future[None], int]] = deque()
        self._unapplied_rows = 0
        self._logger: GroupCommitter[tuple[int, ValidBatch]] = GroupCommitter(
            self._log_batches, name="eventkeep-ingest-log"
        )

    def _migrate(self) -> None:
        """Bring a file written by an earlier version to SCHEMA_VERSION, in one transaction."""
        # fetchall(), here and on the writer's connection throughout: a result fetched only
        # in part keeps DuckDB from registering Arrow tables on the connection.
        rows = self._con.execute("SELECT value FROM eventkeep_meta WHERE key = 'schema_version'").fetchall()
        version = int(rows[0][0]) if rows else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{self.path} was written by a newer eventkeep (schema {version}; this one knows {SCHEMA_VERSION})"
            )
        if version == 1:
            started = time.monotonic()
            with transaction(self._con):
                self._con.execute(MIGRATE_FROM_V1_SQL)
            self._con.execute("CHECKPOINT")
            log.info("events table upgraded to schema 2 in %.1fs", time.monotonic() - started)

    # -- writing -------------------------------------------------------------------------

    async def append(self, project_id: int, batch: ValidBatch) -> None:
        if len(batch) == 0:
            return
        self._check_applying()
        await self._logger.append((project_id, batch), len(batch))

    def append_sync(self, project_id: int, batch: ValidBatch) -> None:
        """For tools outside the event loop (tests, the CLI)."""
        if len(batch):
            self._check_applying()
            self._logger.submit((project_id, batch), len(batch)).result()

    def _check_applying(self) -> None:
        if self._apply_failure is not None:
            raise StoreUnavailable(
                f"applying logged events failed ({self._apply_failure}); they are kept in "
                f"{self._log.directory} and applied when the server restarts"
            )

    def _log_batches(self, items: list[tuple[int, ValidBatch]]) -> None:
        """Make a group of batches durable in the log (their requests are then answered)
        and queue them for the writer. If the writer falls behind, wait for it: requests
        then wait here, rather than memory growing."""
        rows = _with_project_ids(items)
        seq = self._log.append(rows)
        while self._unapplied and (self._unapplied[0][0].done() or self._unapplied_rows > MAX_UNAPPLIED_ROWS):
            future, count = self._unapplied.popleft()
            if not future.done():
                started = time.monotonic()
                future.exception()  # waits; a failure is the writer's to report
                log.info("logging waited %.3fs for the writer (%d rows unapplied)",
                         time.monotonic() - started, self._unapplied_rows)
            self._unapplied_rows -= count
        # Not urgent: these requests are answered once logged, so the writer may gather.
        future = self._writer.submit(_LoggedRows(seq, rows), rows.num_rows, wait=True, urgent=False)
        self._unapplied.append((future, rows.num_rows))
        self._unapplied_rows += rows.num_rows
        self._pace(rows.num_rows)

    def _pace(self, rows: int) -> None:
        """Hold logging back once the writer falls behind, in proportion to how far.

        Without this, ingest workers that check faster than DuckDB applies fill the backlog
        to its bound, and from then on every checkpoint holds every request for its whole
        length. Here each logged group waits the time the writer needs for it, scaled by the
        backlog over PACE_FROM_ROWS: at twice that, logging runs at the writer's pace, so the
        backlog settles there, and the rest of the bound absorbs checkpoints.
        """
        excess = self._unapplied_rows - PACE_FROM_ROWS
        if excess > 0 and self._seconds_per_row > 0:
            time.sleep(min(1.0, rows * self._seconds_per_row * excess / PACE_FROM_ROWS))

    def _commit(self, logged: list[_LoggedRows]) -> None:
        """Apply logged batches in one transaction, recording the last one applied.

        After a failure nothing later is applied either, so the record of what was applied
        never passes an entry that was not: a restart applies all the rest from the log.
        """
        if self._apply_failure is not None:
            raise StoreUnavailable("an earlier apply failed")
        started = time.monotonic()
        try:
            self._apply(logged)
        except BaseException as exc:
            with self._applied:
                self._apply_failure = exc
                self._applied.notify_all()
            raise
        if self._wal_size() > WAL_CHECKPOINT_FORCE_BYTES:
            self._checkpoint()
        rows = sum(entry.rows.num_rows for entry in logged)
        self._last_write = time.monotonic()
        pace = (self._last_write - started) / max(rows, 1)
        self._seconds_per_row = pace if not self._seconds_per_row else 0.8 * self._seconds_per_row + 0.2 * pace

    def _apply(self, logged: list[_LoggedRows]) -> None:
        con = self._con
        rows = pa.concat_tables([entry.rows for entry in logged])
        last_seq = logged[-1].seq
        keys = self._key_index()
        first = self._next_seq
        seqs = np.arange(first, first + rows.num_rows, dtype=np.int64)
        rows = rows.append_column("seq", pa.array(seqs))
        computed = key_halves(rows)
        con.register("incoming", rows)
        try:
            if computed is not None:
                (high, low), seq = computed, seqs
            else:
                high, low, seq = _key_halves(con, "incoming")
            superseded_here = superseded_in_batch(high, low, seq)
            insert = INSERT_SQL
            if superseded_here is not None:  # repeats within the group: the latest copy wins
                kept = ~superseded_here
                high, low, seq = high[kept], low[kept], seq[kept]
                in_order = np.zeros(rows.num_rows, bool)
                in_order[seq - first] = True
                # A column to filter on as DuckDB reads: filtering the Arrow table would
                # copy every string of the group first.
                con.unregister("incoming")
                con.register("incoming", rows.append_column("kept", pa.array(in_order)))
                insert = INSERT_SQL + "WHERE kept\n"
            slots = keys.slots
            replaced = keys.upsert(high, low, seq)  # now ahead of the table
            if keys.slots != slots:
                log.info("event key index grown to %d slots during a write", keys.slots)
            self._next_seq += rows.num_rows
            replaced_rows = replaced[replaced != 0]
            with transaction(con):
                if len(replaced_rows):
                    _delete_seqs(con, replaced_rows)
                con.execute(insert, {"ingested_ms": int(time.time() * 1000)})
                con.execute(
                    "INSERT INTO eventkeep_meta VALUES ('ingest_log_applied', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [str(last_seq)],
                )
        except BaseException:
            self._keys = None  # it may have run ahead of the table: rebuilt before next use
            raise
        finally:
            con.unregister("incoming")
        with self._applied:
            self._applied_seq = last_seq
            self._applied.notify_all()
        self._log.release(last_seq)

    def _key_index(self) -> KeyIndex:
        """The index of stored keys, built from the table when first needed: at the writer's
        first idle second after a start with no export running, or by a write before that."""
        if self._keys is not None:
            return self._keys
        started = time.monotonic()
        cursor = self._con.cursor()
        try:
            [(count, top)] = cursor.execute("SELECT count(*), coalesce(max(seq), 0) FROM events").fetchall()
            keys = KeyIndex(expected=int(count))
            if count:
                for part in cursor.sql(_key_halves_sql("events")).to_arrow_reader(1 << 20):
                    keys.upsert(*(column.to_numpy() for column in part.columns))
        finally:
            cursor.close()
        self._keys, self._next_seq = keys, int(top) + 1
        if count:
            log.info("indexed %d stored event keys in %.1fs", count, time.monotonic() - started)
        return keys

    def _read_applied_seq(self) -> int:
        rows = self._con.execute("SELECT value FROM eventkeep_meta WHERE key = 'ingest_log_applied'").fetchall()
        return int(rows[0][0]) if rows else 0

    def _recover(self) -> None:
        """Apply what the log holds beyond what DuckDB recorded (after a crash)."""
        pending: list[_LoggedRows] = []
        count = 0
        for seq, rows in self._log.entries_after(self._applied_seq):
            pending.append(_LoggedRows(seq, rows))
            count += rows.num_rows
            if count >= 200_000:
                self._commit(pending)
                pending, count = [], 0
        if pending:
            self._commit(pending)
        if self._applied_seq:
            log.info("ingest log applied through entry %d", self._applied_seq)

    def _caught_up(self, timeout: float = 120.0) -> None:
        """Reads see every event acknowledged before they started."""
        target = self._log.last_seq
        self._writer.hurry()
        with self._applied:
            if not self._applied.wait_for(lambda: self._applied_seq >= target or self._apply_failure is not None, timeout):
                raise StoreUnavailable("events are still being applied; retry shortly")
        self._check_applying()

    def _commit_any(self, items: list[_WriterItem]) -> None:
        """Logged events first, then profile work in its own transaction.

        A failed profile commit is reported to its own requests only. A failed event commit
        leaves those events in the log, applied at the next start.
        """
        events = [item for item in items if isinstance(item, _LoggedRows)]
        profiles = [item for item in items if isinstance(item, ProfileWork)]
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
            with transaction(con):
                self._apply_profile_work(works)
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
        """Write DuckDB's log into the file, on one thread: under full load a checkpoint on
        every core starves the ingest workers for its whole length (requests then wait),
        while on one it takes a little longer and the unapplied backlog absorbs it."""
        started, wal = time.monotonic(), self._wal_size()
        self._con.execute("SET threads = 1")
        try:
            self._con.execute("CHECKPOINT")
        except duckdb.TransactionException as exc:
            # DuckDB refuses while another transaction is open: an export streaming its
            # rows. Nothing is wrong with what was just committed; DuckDB's log only grows
            # until the next commit or idle second, when the writer tries again.
            log.debug("checkpoint deferred: %s", exc)
            return
        finally:
            self._con.execute("RESET threads")
        log.info("checkpoint of %.0f MB of log took %.3fs", wal / 1e6, time.monotonic() - started)

    def _checkpoint_if_idle(self) -> None:
        """Idle-time work of the writer: one step of clustering by time, once writes have
        paused for CLUSTER_AFTER_QUIET_S (a step checkpoints at the end of a pass, to vacuum
        the moved rows' old slots; see eventkeep/store/duckdb_cluster.py), then a checkpoint
        if the log has grown; the key index is built, or grown, here rather than in a write."""
        clustering = clustering_of(self)
        if clustering.pass_requested or time.monotonic() - self._last_write >= CLUSTER_AFTER_QUIET_S:
            clustering.run_idle(self._con, self._checkpoint)
        if not clustering.exporting:  # an export's memory and the index's, not both at once
            keys = self._key_index()  # built ahead of the first write after a start
            if keys.grow_if_fuller_than(IDLE_GROW_SHARE):
                log.info("event key index grown to %d slots", keys.slots)
        if self._wal_size() > WAL_CHECKPOINT_IDLE_BYTES:
            self._checkpoint()

    def cluster(self, timeout: float | None = None) -> int:
        """Cluster every scattered time range now; return how many rows moved.

        The pass runs on the writer thread at its next idle moment (within a second), all
        at once, so writes wait for it: for tools and benchmarks after a bulk load. A
        running server does the same in small steps while idle.
        """
        return clustering_of(self).request_full_pass().result(timeout)

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
        self._caught_up()
        where, params = self._filter(query)
        row = self._con.cursor().execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()
        return int(row[0]) if row else 0

    # Bounds on the bytes of lines one export window sorts (see _window_budget); the first
    # window guesses this many bytes per line, the next ones know.
    WINDOW_MAX_BYTES = 64 * 1024 * 1024
    WINDOW_MIN_BYTES = 1024 * 1024
    WINDOW_FIRST_LINE_BYTES = 1024

    def export_lines(
        self,
        query: ScanQuery,
        *,
        time_in_ms: bool = False,
        local_time_zone: str | None = None,
        rows_per_chunk: int = 2048,
        rows_per_window: int | None = None,
        bytes_per_chunk: int = 512 * 1024,
    ) -> Iterator[bytes]:
        """Stream the export in time order, one bounded time window at a time.

        One ORDER BY over a whole export holds every selected row in memory before the
        first leaves (about 0.9 GB for a million events), and under a memory limit DuckDB
        spills the sort at about 145k events/s. Instead, consecutive time windows, chosen
        from a histogram of `time_ms`, each sort only their own rows in memory, so memory
        stays flat however long the export. A window's lines may take a quarter of DuckDB's
        memory limit, at most 64 MB (`_window_budget`: ~65k events of the benchmark's size
        under a 128 MB limit), and `rows_per_window` if given.

        A window's filter on `time_ms` is cheap only if the table is stored roughly in time
        order, since DuckDB decodes `properties` for every 2,048-row vector holding a row of
        the window. Events that arrive in time order are; idle-time clustering
        (duckdb_cluster.py) moves those imported out of order. Unclustered, the export is
        as exact and as flat, but every window decodes the whole table (5M scattered
        events, 128 MB limit: 287k events/s, against 645k/s clustered).

        DuckDB hands over batches of `rows_per_chunk` lines (small batches keep its
        conversion buffers small: 2,048 rows peaked 40 MB lower than 10,000); they go out
        joined in chunks of about `bytes_per_chunk`, since each chunk costs a hop between
        threads in the HTTP layer. While an export runs, clustering steps wait.
        """
        self._caught_up()
        with clustering_of(self).reading():
            budget = self._window_budget()
            seen = [0, 0]  # lines and bytes exported so far, to size the next window

            def window_rows() -> int:
                line_bytes = seen[1] / seen[0] if seen[0] else self.WINDOW_FIRST_LINE_BYTES
                rows = max(1, int(budget / line_bytes))
                return rows if rows_per_window is None else min(rows, rows_per_window)

            remaining = query.limit
            pending: list[bytes] = []
            size = 0
            for window_from, window_to in self._windows(query, window_rows):
                window = replace(query, from_ms=window_from, to_ms=window_to, limit=remaining)
                for piece, lines in self._export_window(window, time_in_ms, local_time_zone, rows_per_chunk):
                    seen[0] += lines
                    seen[1] += len(piece)
                    if remaining is not None:
                        remaining -= lines
                    pending.append(piece)
                    size += len(piece)
                    if size >= bytes_per_chunk:
                        yield pending[0] if len(pending) == 1 else b"".join(pending)
                        pending, size = [], 0
                if remaining is not None and remaining <= 0:
                    break
            if pending:
                yield b"".join(pending)

    def _window_budget(self) -> int:
        """Bytes of lines one export window may sort: a quarter of what DuckDB's memory limit
        leaves beside its indexes (the profiles' primary key; a window of 87 MB of lines
        still sorted under a 128 MB limit, 110 MB did not; a third, against a quarter, took
        the 1M export's peak RSS from 287 to 296 MB at the same speed), at most
        WINDOW_MAX_BYTES."""
        cursor = self._con.cursor()  # the writer thread may be using the connection
        try:
            limit = memory_limit_bytes(cursor)
            row = cursor.execute(
                "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'ART_INDEX'"
            ).fetchone()
        finally:
            cursor.close()
        if limit is None:
            return self.WINDOW_MAX_BYTES
        free = limit - (int(row[0]) if row else 0)
        return max(self.WINDOW_MIN_BYTES, min(self.WINDOW_MAX_BYTES, free // 4))

    def _windows(
        self, query: ScanQuery, window_rows: Callable[[], int]
    ) -> Iterator[tuple[int | None, int | None]]:
        """Consecutive time ranges holding about `window_rows()` candidate rows each,
        asked afresh for each window (the export learns the size of its lines).

        The histogram's buckets hold about an eighth of the first window each (at most an
        hour, at least a second), so that a busy hour does not make one oversized window.
        The ranges meet end to end and keep the caller's bounds at both ends.
        """
        coarse = replace(query, events=None, where=None, limit=None)
        where, params = self._filter(coarse)
        cursor = self._con.cursor()
        try:
            row = cursor.execute(
                f"SELECT count(*), min(time_ms), max(time_ms) FROM events WHERE {where}", params
            ).fetchone()
            if row is None or not row[0]:
                return
            total, low, high = (int(value) for value in row)
            width = bucket_ms(high - low + 1, total, window_rows())
            histogram = cursor.execute(
                f"SELECT (time_ms - {low}) // {width} AS b, count(*) FROM events WHERE {where} "
                "GROUP BY b ORDER BY b",
                params,
            ).fetchall()
        finally:
            cursor.close()
        start, rows, target = query.from_ms, 0, window_rows()
        for bucket, count in histogram[:-1]:
            rows += count
            if rows >= target:
                end = low + (bucket + 1) * width
                yield start, end
                start, rows, target = end, 0, window_rows()
        yield start, query.to_ms

    def _export_window(
        self, query: ScanQuery, time_in_ms: bool, local_time_zone: str | None, rows_per_chunk: int
    ) -> Iterator[tuple[bytes, int]]:
        """The window's lines, in batches: (bytes, number of lines)."""
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
        # exactly the bytes to send: no per-row work in Python. One concat() builds the line
        # in one pass (a chain of || makes a string per step: ~10 % slower, more memory).
        sql = f"""
            SELECT concat('{{"event":', to_json(event), ',"properties":{{"time":', {time_expr},
                ',"distinct_id":', to_json(distinct_id),
                CASE WHEN properties = '{{}}' THEN '}}' ELSE ',' || substr(properties, 2) END,
                '}}', chr(10)) AS line
            FROM events WHERE {where}
            ORDER BY time_ms, insert_id{limit}
        """
        cursor = self._con.cursor()
        try:
            # The relational API streams; execute() would materialise the whole result first.
            reader = cursor.sql(sql, params=params).to_arrow_reader(rows_per_chunk)
            for record_batch in reader:
                if record_batch.num_rows:
                    yield _string_column_bytes(record_batch.column(0)), record_batch.num_rows
        finally:
            cursor.close()

    def close(self) -> None:
        self._logger.close()
        self._writer.close()
        try:
            self._checkpoint()
        finally:
            self._con.close()
            self._log.close()


def _key_halves(con: duckdb.DuckDBPyConnection, source: str) -> tuple[Any, Any, Any]:
    """(high, low, seq) of each row of `source`, in whatever order DuckDB returns them."""
    halves = con.execute(_key_halves_sql(source)).fetchnumpy()
    return (
        np.asarray(halves["high"], np.uint64),
        np.asarray(halves["low"], np.uint64),
        np.asarray(halves["seq"], np.int64),
    )


def _delete_seqs(con: duckdb.DuckDBPyConnection, seqs: Any) -> None:
    """Delete the rows with these seqs. The range lets DuckDB skip the row groups outside
    it (seqs grow with the table, so retries of recent events touch only its end)."""
    con.register("superseded", pa.table({"seq": pa.array(seqs)}))
    try:
        [(deleted,)] = con.execute(
            f"DELETE FROM events WHERE seq BETWEEN {int(seqs.min())} AND {int(seqs.max())} "
            "AND seq IN (SELECT seq FROM superseded)"
        ).fetchall()
    finally:
        con.unregister("superseded")
    if int(deleted) != len(seqs):
        raise RuntimeError(f"replacing {len(seqs)} re-sent events deleted {deleted} rows")


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


def _with_project_ids(items: list[tuple[int, ValidBatch]]) -> pa.Table:
    """The batches as one Arrow table with a project_id column, joined without copying."""
    tables = [_with_project_id(project_id, batch.rows) for project_id, batch in items]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def superseded_in_batch(high: Any, low: Any, seq: Any) -> Any:
    """Which rows a later row of the same group (higher seq, same key) supersedes, as a
    mask; None when every key occurs once, the usual case. One sort of the low halves
    finds the candidates; only those are compared whole."""
    ordered = np.sort(low)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return None
    candidates = np.flatnonzero(np.isin(low, repeated))
    order = candidates[np.lexsort((seq[candidates], high[candidates], low[candidates]))]
    followed_by_same_key = (low[order[1:]] == low[order[:-1]]) & (high[order[1:]] == high[order[:-1]])
    superseded = np.zeros(len(low), bool)
    superseded[order[:-1][followed_by_same_key]] = True
    return superseded if superseded.any() else None


def _with_project_id(project_id: int, rows: pa.Table) -> pa.Table:
    return rows.append_column("project_id", pa.repeat(pa.scalar(project_id, pa.int32()), rows.num_rows))
