"""The scale-out store: events and profiles in ClickHouse, behind any number of stateless servers.

Writes. Requests hand their validated batch to one writer thread per process
(`GroupCommitter`), which sends everything waiting as one JSONEachRow INSERT over HTTP. The
request's 200 waits for ClickHouse's answer to that INSERT; with a cluster, the INSERT goes
through the Distributed table with `insert_distributed_sync=1`, so ClickHouse answers only
once every shard holding part of the batch has written it. Any failure (a shard down, a
timeout, too many parts) fails every request of that commit with `StoreUnavailable`: 503 and
Retry-After, never a 200 for events that were not stored. A failed cross-shard insert may
have stored some rows on the healthy shards; the client's retry stores them again and
deduplication makes that harmless.

Deduplication. `events_local` is a ReplacingMergeTree whose sorting key is the event's
identity (project, event, distinct_id, time, $insert_id) and whose version is the ingestion
time, so the latest copy wins. Merges run whenever ClickHouse likes, so reads never rely on
them: every read uses FINAL, which merges copies at query time. All copies of an event land
on one shard (the table is sharded by distinct_id, part of the key) and in one partition
(the month of `time`, part of the key), so FINAL per shard is exact. Copies inside one commit
are removed before sending, keeping the last, as DuckDB does.

Profiles. Read-modify-write across several servers would lose concurrent updates, so updates
are appended to a log (`profile_updates`) and folded in order (ingestion time, writer, sequence)
whenever a profile is read; nothing is ever rewritten. The writer still folds the current state
before appending, to refuse updates that would break a profile limit; with several servers
writing one profile at the same moment that check is best effort, but the fold applies the
same check, so a stored profile never exceeds the limits.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from eventkeep.errors import RecordError
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.profiles import ProfileUpdate, apply_checked
from eventkeep.store.base import ScanQuery
from eventkeep.store.clickhouse_schema import (
    VALUE_SEPARATOR,
    ClickHouseError,
    ClickHouseHTTP,
    ClickHouseTarget,
    Tables,
    chunks_of,
    ensure_schema,
    literal,
)
from eventkeep.store.group_commit import GroupCommitter
from eventkeep.store.writes import ProfileWork, WriteItem, queue_profile_updates, split_writes

log = logging.getLogger("eventkeep.store.clickhouse")

EVENT_INSERT_COLUMNS = "project_id, event, distinct_id, time_ms, insert_id, ingested_ms, properties, prop_keys, prop_raw"
# FINAL through a Distributed table on 18.16 needs every sorting-key column and the version
# in the query each shard runs, or the shard answers "Cannot find column". Inner queries
# select them all.
EVENT_KEY_COLUMNS = "project_id, event, distinct_id, time_ms, insert_id, ingested_ms"
LINE_PREFIX = b'{"event":'

# Each top-level property value's raw JSON text, by key: exact, unlike visitParam*.
PROP_VALUES_SQL = f"splitByChar({literal(VALUE_SEPARATOR)}, prop_raw)"


class _Row(msgspec.Struct):
    project_id: int
    event: str
    distinct_id: str
    time_ms: int
    insert_id: str
    ingested_ms: int
    properties: str
    prop_keys: list[str]
    prop_raw: str


class _ProfileRow(msgspec.Struct):
    project_id: int
    kind: str
    profile_id: str
    ingested_ms: int
    writer: str
    seq: int
    update: str


class _StoredUpdate(msgspec.Struct):
    """What the log keeps of a ProfileUpdate: enough to apply it again."""

    o: str
    v: Any
    t: int | None


_RAW_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ENCODER = msgspec.json.Encoder()
_UPDATE_DECODER = msgspec.json.Decoder(_StoredUpdate)


def split_properties(properties: bytes) -> tuple[list[str], str]:
    """Top-level keys and their values' raw JSON, joined: what filters read instead of JSON."""
    parsed = _RAW_OBJECT.decode(properties)
    return list(parsed), VALUE_SEPARATOR.encode().join(parsed.values()).decode()


def json_string_sql(column: str) -> str:
    """SQL for a String column's JSON string literal (18.16 has no JSON encoder).

    Backslash and quote are escaped, then each control character; rows that need none of it
    (nearly all) skip the chain.
    """
    chain = f"replaceAll(replaceAll({column}, '\\\\', '\\\\\\\\'), '\"', '\\\\\"')"
    short = {8: "\\\\b", 9: "\\\\t", 10: "\\\\n", 12: "\\\\f", 13: "\\\\r"}
    for code in range(32):
        escaped = short.get(code, "\\\\u" + format(code, "04X"))  # upper case, as DuckDB writes it
        chain = f"replaceAll({chain}, {literal(chr(code))}, '{escaped}')"
    return f"concat('\"', if(match({column}, '[\\\\x00-\\\\x1f\"\\\\\\\\]'), {chain}, {column}), '\"')"


_EVENT_JSON = json_string_sql("event")
_DISTINCT_ID_JSON = json_string_sql("distinct_id")


class ClickHouseStore:
    def __init__(self, target: ClickHouseTarget, *, create_schema: bool = True) -> None:
        self.target = target
        self.tables = Tables(target.database, sharded=target.cluster is not None)
        # Separate pools: a slow export never holds up the writer's connection.
        self._writer_http = ClickHouseHTTP.for_target(target, timeout=target.insert_timeout)
        self._reader_http = ClickHouseHTTP.for_target(target)
        if create_schema:
            ensure_schema(target, self._reader_http)
        self._writer_id = uuid.uuid4().hex[:16]
        self._seq = itertools.count()
        self._last_ingested_ms = 0
        self._clock_lock = threading.Lock()
        self._writer: GroupCommitter[WriteItem] = GroupCommitter(
            self._commit_any, name="eventkeep-clickhouse-writer"
        )

    # -- writing -------------------------------------------------------------------------

    def _ingested_ms(self) -> int:
        """Ingestion time, strictly increasing within this process, so a later commit's copy
        of an event always has the higher version."""
        with self._clock_lock:
            now = max(int(time.time() * 1000), self._last_ingested_ms + 1)
            self._last_ingested_ms = now
            return now

    def _client_insert_timeout(self) -> float:
        """A little longer than ClickHouse's own insert_distributed_timeout, so that its error,
        which names the shard, usually arrives before the client gives up."""
        return self.target.insert_timeout + min(5.0, self.target.insert_timeout)

    def _insert_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if self.tables.sharded:
            settings["insert_distributed_sync"] = 1
            settings["insert_distributed_timeout"] = max(1, int(self.target.insert_timeout))
        return settings

    async def append(self, project_id: int, batch: ValidBatch) -> None:
        if len(batch) == 0:
            return
        await self._writer.append((project_id, batch), len(batch))

    def append_sync(self, project_id: int, batch: ValidBatch) -> None:
        """For tools outside the event loop (tests, the CLI)."""
        if len(batch):
            self._writer.submit((project_id, batch), len(batch)).result()

    def _commit_any(self, items: list[WriteItem]) -> None:
        """Events first, in one INSERT; profile work after, reported to its own requests."""
        events, profiles = split_writes(items)
        if events:
            self._insert_events(events)
        if profiles:
            self._commit_profiles(profiles)

    def _insert_events(self, items: list[tuple[int, ValidBatch]]) -> None:
        ingested_ms = self._ingested_ms()
        latest: dict[tuple[int, str, str, int, str], _Row] = {}
        for project_id, batch in items:
            for event, distinct_id, time_ms, insert_id, properties in zip(
                batch.events, batch.distinct_ids, batch.times_ms, batch.insert_ids, batch.properties, strict=True
            ):
                keys, raw = split_properties(properties)
                latest[(project_id, event, distinct_id, time_ms, insert_id)] = _Row(
                    project_id, event, distinct_id, time_ms, insert_id, ingested_ms,
                    properties.decode(), keys, raw,
                )
        body = _ENCODER.encode_lines(list(latest.values()))
        self._writer_http.execute(
            f"INSERT INTO {self.tables.events} ({EVENT_INSERT_COLUMNS}) FORMAT JSONEachRow",
            data=body,
            settings=self._insert_settings(),
            timeout=self._client_insert_timeout(),
        )

    # -- profiles ------------------------------------------------------------------------

    async def update_profiles(
        self, project_id: int, updates: Sequence[ProfileUpdate]
    ) -> list[RecordError]:
        return await queue_profile_updates(self._writer, project_id, updates)

    def _commit_profiles(self, works: list[ProfileWork]) -> None:
        try:
            self._apply_profile_work(works)
        except Exception as exc:
            log.exception("profile commit of %d requests failed", len(works))
            for work in works:
                work.errors.clear()
                work.failure = exc

    def _apply_profile_work(self, works: list[ProfileWork]) -> None:
        keys = list(
            dict.fromkeys(
                (work.project_id, update.kind, update.profile_id)
                for work in works
                for update in work.updates
            )
        )
        state = self._fold(keys, self._writer_http)
        accepted: list[tuple[int, ProfileUpdate]] = []
        for work in works:
            for update in work.updates:
                key = (work.project_id, update.kind, update.profile_id)
                result, error = apply_checked(state.get(key), update)
                if error is not None:
                    work.errors.append(error)
                    continue
                state[key] = result
                accepted.append((work.project_id, update))
        if not accepted:
            return
        ingested_ms = self._ingested_ms()
        rows = [
            _ProfileRow(
                project_id, update.kind, update.profile_id, ingested_ms, self._writer_id, next(self._seq),
                _ENCODER.encode(_StoredUpdate(update.operation, update.value, update.last_seen_ms)).decode(),
            )
            for project_id, update in accepted
        ]
        self._writer_http.execute(
            f"INSERT INTO {self.tables.profile_updates} "
            "(project_id, kind, profile_id, ingested_ms, writer, seq, update) FORMAT JSONEachRow",
            data=_ENCODER.encode_lines(rows),
            settings=self._insert_settings(),
            timeout=self._client_insert_timeout(),
        )

    def _fold(
        self, keys: list[tuple[int, str, str]], http: ClickHouseHTTP
    ) -> dict[tuple[int, str, str], dict[str, Any] | None]:
        """Profiles' current state: every logged update, applied in log order."""
        state: dict[tuple[int, str, str], dict[str, Any] | None] = {}
        by_project: dict[int, list[tuple[str, str]]] = {}
        for project_id, kind, profile_id in keys:
            by_project.setdefault(project_id, []).append((kind, profile_id))
        for project_id, wanted in by_project.items():
            for chunk in chunks_of(wanted, 1000):
                rows = http.json_rows(
                    f"SELECT kind, profile_id, update FROM {self.tables.profile_updates} "
                    f"WHERE project_id = {int(project_id)} AND (kind, profile_id) IN ({', '.join(literal(k) for k in chunk)}) "
                    "ORDER BY kind, profile_id, ingested_ms, writer, seq"
                )
                for row in rows:
                    key = (project_id, row["kind"], row["profile_id"])
                    stored = _UPDATE_DECODER.decode(row["update"])
                    update = ProfileUpdate(0, None, row["kind"], row["profile_id"], stored.o, stored.v, stored.t)
                    state[key] = apply_checked(state.get(key), update)[0]
        return state

    def get_profile(self, project_id: int, kind: str, profile_id: str) -> dict[str, Any] | None:
        key = (project_id, kind, profile_id)
        return self._fold([key], self._reader_http).get(key)

    # -- reading -------------------------------------------------------------------------

    def _filter(self, query: ScanQuery) -> str:
        """The SQL condition. With `where`, it may select more than the filter accepts (see
        eventkeep.query.clickhouse_sql): callers then apply `evaluate.matches` as well."""
        clauses = [f"project_id = {int(query.project_id)}"]
        if query.from_ms is not None:
            clauses.append(f"time_ms >= {int(query.from_ms)}")
        if query.to_ms is not None:
            clauses.append(f"time_ms < {int(query.to_ms)}")
        if query.events is not None:
            if not query.events:
                clauses.append("0")
            else:
                clauses.append(f"event IN ({', '.join(literal(e) for e in query.events)})")
        if query.where is not None:
            from eventkeep.query.clickhouse_sql import compile_prefilter

            prefilter = compile_prefilter(query.where)
            if prefilter is not None:
                clauses.append(prefilter)
        return " AND ".join(clauses)

    def count(self, query: ScanQuery) -> int:
        if query.where is not None:
            return sum(chunk.count(b"\n") for chunk in self.export_lines(query))
        where = self._filter(query)
        sql = (
            f"SELECT count() FROM (SELECT {EVENT_KEY_COLUMNS} FROM {self.tables.events} FINAL "
            f"WHERE {where})"
        )
        return int(self._reader_http.scalar(sql))

    def export_lines(
        self,
        query: ScanQuery,
        *,
        time_in_ms: bool = False,
        local_time_zone: str | None = None,
    ) -> Iterator[bytes]:
        where = self._filter(query)
        time_ms = "time_ms"
        if local_time_zone is not None:
            zone = literal(local_time_zone)
            time_ms = (
                f"(time_ms + 1000 * (toUnixTimestamp(toString(toDateTime(intDiv(time_ms, 1000), {zone})), 'UTC')"
                " - intDiv(time_ms, 1000)))"
            )
        time_expr = time_ms if time_in_ms else f"intDiv({time_ms}, 1000)"
        # With `where`, rows carry their true time too (after a tab) for the evaluator, and
        # the limit counts the rows it accepts, so SQL cannot apply it.
        filtered = query.where is not None
        limit = f" LIMIT {int(query.limit)}" if query.limit is not None and not filtered else ""
        line = (
            f"""concat('{{"event":', {_EVENT_JSON}, ',"properties":{{"time":', toString({time_expr}), """
            f"""',"distinct_id":', {_DISTINCT_ID_JSON}, """
            f"""if(properties = '{{}}', '}}', concat(',', substring(properties, 2))), '}}'"""
            + (", '\\t', toString(time_ms))" if filtered else ")")
        )
        # Shards sort their part; the entry node merges the sorted streams, so nothing is
        # sorted twice and the answer streams.
        sql = (
            f"SELECT line FROM (SELECT {line} AS line, {EVENT_KEY_COLUMNS} "
            f"FROM {self.tables.events} FINAL WHERE {where} ORDER BY time_ms, insert_id{limit}) "
            "FORMAT TabSeparatedRaw"
        )
        settings = {"extremes": 1, "max_bytes_before_external_sort": 1 << 30}
        with self._reader_http.stream(sql, settings=settings) as chunks:
            if not filtered:
                yield from checked_lines(chunks)
                return
            yield from _evaluated(checked_lines(chunks), query.where, query.limit)

    def close(self) -> None:
        self._writer.close()
        self._writer_http.close()
        self._reader_http.close()


_LINE_DECODER = msgspec.json.Decoder()


def _evaluated(chunks: Iterator[bytes], where: Any, limit: int | None) -> Iterator[bytes]:
    """The lines (`line TAB time_ms`) the reference evaluator accepts, up to `limit`.

    The evaluator sees each event as export writes it, but with its true time in seconds:
    the line may hold milliseconds or a local-time shift.
    """
    from eventkeep.query.evaluate import matches

    if limit is not None and limit <= 0:
        return
    remaining = limit
    for chunk in chunks:
        kept: list[bytes] = []
        for row in chunk.split(b"\n")[:-1]:
            line, _, time_ms = row.rpartition(b"\t")
            event = _LINE_DECODER.decode(line)
            event["properties"]["time"] = int(time_ms) / 1000
            if matches(where, event):
                kept.append(line)
                if remaining is not None:
                    remaining -= 1
                    if remaining <= 0:
                        break
        if kept:
            yield b"\n".join(kept) + b"\n"
        if remaining is not None and remaining <= 0:
            return


def checked_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Pass through export lines, proving the answer complete before the last one leaves.

    ClickHouse reports an error that happens after it has begun answering by appending the
    error's text to the body of a 200. The query asks for `extremes`, which ClickHouse writes
    after the data only when the query succeeded: a blank line, then two rows. So a line
    leaves only once the next one is seen to begin a row (a line cut by an error is then held
    back), and the stream must end in exactly that trailer. Anything else raises, and the
    HTTP layer ends the export with its "terminated early" marker.
    """
    pending = b""
    started = False
    for chunk in chunks:
        if not chunk:
            continue
        pending += chunk
        if not started:
            if len(pending) < len(LINE_PREFIX):
                continue
            if not pending.startswith((LINE_PREFIX, b"\n")):
                break  # an error's text, or something that is not our rows
            started = True
        # Rows followed by another row start are whole. Past a blank line (the trailer, or
        # a break inside an error's text) nothing leaves before the end, and neither does
        # the row just before it.
        blank = pending.find(b"\n\n")
        region = pending if blank < 0 else pending[:blank]
        cut = region.rfind(b"\n" + LINE_PREFIX)
        if cut <= 0:
            continue
        ready = pending[: cut + 1]
        if ready.count(b"\n") != (ready + LINE_PREFIX).count(b"\n" + LINE_PREFIX):
            break  # a line that does not begin a row: an error's text
        yield ready
        pending = pending[cut + 1 :]
    else:
        if not pending:
            return  # no rows, from a single node: nothing at all
        lines = pending.split(b"\n")
        # rows..., "", min, max, "" (after the final newline). Through a Distributed table
        # a shard without rows contributes empty extremes, so min or max may be empty.
        if (
            len(lines) >= 4
            and lines[-1] == b""
            and lines[-4] == b""
            and all(not line or line.startswith(LINE_PREFIX) for line in lines[-3:-1])
            and all(line.startswith(LINE_PREFIX) for line in lines[:-4])
        ):
            if len(lines) > 4:
                yield b"\n".join(lines[:-4]) + b"\n"
            return
    raise ClickHouseError(f"the export stream from ClickHouse ended badly: {pending[-300:]!r}")
