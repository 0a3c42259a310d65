"""The ClickHouse store and registry against a real two-shard ClickHouse 18.16 cluster.

The strongest check is differential: the same batches go into a DuckDB store and a ClickHouse
store, and every export must be byte-for-byte the same. The rest covers what only ClickHouse
has: dedup without merges (and after them), the stream check that catches errors ClickHouse
reports inside a 200, profile updates from several servers at once, lock-free project ids,
and schema migration.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.profiles import ProfileUpdate, validate_updates
from eventkeep.ingest.validate import IngestContext, validate_events
from eventkeep.projects.clickhouse import ClickHouseRegistry
from eventkeep.store.base import ScanQuery, StoreUnavailable
from eventkeep.store.clickhouse import ClickHouseStore, checked_lines, split_properties
from eventkeep.store.clickhouse_schema import (
    SCHEMA_VERSION,
    ClickHouseError,
    ClickHouseHTTP,
    ClickHouseTarget,
    literal,
    migrate,
    schema_statements,
)
from eventkeep.store.duckdb import DuckDBStore
from tests import clickhouse_fixture
from tests.clickhouse_fixture import ClickHouseCluster

# Skipped on a developer machine without ClickHouse; in CI (which installs it) they must run.
pytestmark = pytest.mark.skipif(
    not clickhouse_fixture.available() and not os.environ.get("CI"), reason="clickhouse-server is not installed"
)

NOW_MS = 1_800_000_000_000
CTX = IngestContext("import", NOW_MS, "test")


def ev(insert_id: str, t: int = 1_700_000_000, name: str = "e", distinct_id: str = "u", **props: Any) -> dict[str, Any]:
    return {"event": name, "properties": {"time": t, "distinct_id": distinct_id, "$insert_id": insert_id, **props}}


def batch(*events: dict[str, Any]) -> ValidBatch:
    result = validate_events(list(events), CTX)
    assert not result.errors, result.errors
    return result


def exported(store: Any, query: ScanQuery | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    body = b"".join(store.export_lines(query or ScanQuery(1), **kwargs))
    return [json.loads(line) for line in body.splitlines()]


@pytest.fixture(scope="module")
def cluster() -> ClickHouseCluster:
    from tests.conftest import clickhouse_cluster

    return clickhouse_cluster()


def fresh_url(cluster: ClickHouseCluster, *, sharded: bool = True, extra: str = "") -> str:
    return cluster.store_url(f"t_{uuid.uuid4().hex[:12]}", sharded=sharded, extra=extra)


@pytest.fixture(params=["sharded", "single"])
def store(request: pytest.FixtureRequest, cluster: ClickHouseCluster) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore(ClickHouseTarget.parse(fresh_url(cluster, sharded=request.param == "sharded")))
    yield s
    s.close()


# -- events ----------------------------------------------------------------------------------


def test_latest_copy_wins_within_and_across_commits_before_and_after_merges(store: ClickHouseStore) -> None:
    store.append_sync(1, batch(ev("a", v=1), ev("a", v=2), ev("b", v=1)))
    store.append_sync(1, batch(ev("a", v=3)))
    store.append_sync(1, batch(ev("b", v=2), ev("c", v=1)))
    store.append_sync(1, batch(ev("b", v=3)))
    expected = {"a": 3, "b": 3, "c": 1}
    assert {e["properties"]["$insert_id"]: e["properties"]["v"] for e in exported(store)} == expected
    assert store.count(ScanQuery(1)) == 3
    # Several parts hold copies now; after ClickHouse merges them the answer is the same.
    http = ClickHouseHTTP.for_target(store.target)
    try:
        assert int(http.scalar(f"SELECT count() FROM {store.tables.events} WHERE project_id = 1")) == 6
        for node in _nodes(store.target):
            node_http = ClickHouseHTTP.for_target(store.target, store.target.node_url(node))
            node_http.execute(f"OPTIMIZE TABLE `{store.target.database}`.events_local FINAL")
            node_http.close()
        assert int(http.scalar(f"SELECT count() FROM {store.tables.events} WHERE project_id = 1")) == 3
    finally:
        http.close()
    assert {e["properties"]["$insert_id"]: e["properties"]["v"] for e in exported(store)} == expected


def _nodes(target: ClickHouseTarget) -> list[str]:
    return list(target.nodes) or [target.base_url.split("://", 1)[1]]


def test_dedup_key_is_the_whole_identity(store: ClickHouseStore) -> None:
    store.append_sync(1, batch(
        ev("x", name="ab", distinct_id="c"), ev("x", name="a", distinct_id="bc"),
        ev("x", t=1_700_000_001), ev("x", distinct_id="other"), ev("x", name="other"), ev("y"),
    ))
    store.append_sync(2, batch(ev("x")))
    assert store.count(ScanQuery(1)) == 6 and store.count(ScanQuery(2)) == 1


def test_export_filters_orders_limits_and_counts(store: ClickHouseStore) -> None:
    store.append_sync(1, batch(
        ev("c", t=1_700_000_300), ev("a", t=1_700_000_100, name="Other"), ev("b", t=1_700_000_200),
        ev("d", t=1_700_000_200),
    ))
    assert [e["properties"]["$insert_id"] for e in exported(store)] == ["a", "b", "d", "c"]
    ranged = ScanQuery(1, from_ms=1_700_000_150_000, to_ms=1_700_000_300_000)
    assert [e["properties"]["$insert_id"] for e in exported(store, ranged)] == ["b", "d"]
    assert store.count(ranged) == 2
    named = ScanQuery(1, events=("Other", "nope"))
    assert [e["properties"]["$insert_id"] for e in exported(store, named)] == ["a"]
    assert exported(store, ScanQuery(1, events=())) == []
    assert [e["properties"]["$insert_id"] for e in exported(store, ScanQuery(1, limit=2))] == ["a", "b"]
    assert exported(store, ScanQuery(1, limit=0)) == []
    assert exported(store, ScanQuery(99)) == []


NASTY = [
    "plain", 'quote"d', "back\\slash", "new\nline", "tab\there", "\x00\x01\x1f\x7f", "é ü 日本 ✓",
    "\u2028x\u2029", "emoji 😀", "'single'", "--", "a/*b*/", "\\'", "{}x", '{"a":1}',
]


def test_exports_are_byte_identical_to_duckdb(cluster: ClickHouseCluster, tmp_path: Path) -> None:
    """Same batches, same queries: DuckDB (the reference) and ClickHouse write the same bytes."""
    events = [
        ev(f"i{i}", t=1_700_000_000 + 37 * i, name=NASTY[i % len(NASTY)], distinct_id=NASTY[(i + 3) % len(NASTY)],
           text=NASTY[(i + 5) % len(NASTY)], n=i, f=i / 7, big=2**70 + i, flag=i % 2 == 0, none=None,
           nested={"k": [1, "x", {"deep": NASTY[i % len(NASTY)]}]}, **{NASTY[(i + 1) % len(NASTY)]: i})
        for i in range(60)
    ]
    events.append({"event": "bare", "properties": {"time": 1_700_000_000.5, "distinct_id": 42}})
    duck = DuckDBStore(tmp_path / "events.duckdb")
    click = ClickHouseStore(ClickHouseTarget.parse(fresh_url(cluster)))
    try:
        first, second = batch(*events[:30]), batch(*events[25:])  # overlapping: dedup on both
        for store in (duck, click):
            store.append_sync(1, first)
            store.append_sync(1, second)
        queries: list[tuple[ScanQuery, dict[str, Any]]] = [
            (ScanQuery(1), {}),
            (ScanQuery(1), {"time_in_ms": True}),
            (ScanQuery(1, from_ms=1_700_000_500_000, to_ms=1_700_001_000_000), {}),
            (ScanQuery(1, events=(NASTY[3], NASTY[5], "bare")), {}),
            (ScanQuery(1, limit=7), {"time_in_ms": True}),
            (ScanQuery(1), {"local_time_zone": "America/Los_Angeles"}),
            (ScanQuery(1), {"local_time_zone": "Asia/Kolkata", "time_in_ms": True}),
        ]
        for query, kwargs in queries:
            expected = b"".join(duck.export_lines(query, **kwargs))
            assert expected  # each query selects something
            assert b"".join(click.export_lines(query, **kwargs)) == expected, (query, kwargs)
            assert click.count(query) == duck.count(query)
    finally:
        duck.close()
        click.close()


def test_top_level_properties_are_reachable_exactly(store: ClickHouseStore) -> None:
    store.append_sync(1, batch(ev("a", plan="pro", cart={"plan": "nested"}, n=1.5, tags=["x"], s="a\x1fb")))
    http = ClickHouseHTTP.for_target(store.target)
    try:
        rows = http.json_rows(
            f"SELECT prop_keys, splitByChar('\\x1f', prop_raw) AS vals FROM {store.tables.events} WHERE project_id = 1"
        )
    finally:
        http.close()
    [row] = rows
    values = dict(zip(row["prop_keys"], row["vals"], strict=True))
    assert values["plan"] == '"pro"' and values["cart"] == '{"plan":"nested"}'
    assert values["n"] == "1.5" and values["tags"] == '["x"]' and values["s"] == '"a\\u001fb"'
    assert split_properties(b'{"a":{"b":[1,2]},"c":"\\u001f"}') == (["a", "c"], '{"b":[1,2]}\x1f"\\u001f"')


def test_literals_survive_any_text(cluster: ClickHouseCluster) -> None:
    http = ClickHouseHTTP(cluster.nodes[0].url)
    try:
        for text in [*NASTY, "x" * 5000, "".join(chr(c) for c in range(1, 128))]:
            got = http.json_rows(f"SELECT {literal(text)} AS s")[0]["s"]
            assert got == text
        assert http.json_rows(f"SELECT {literal(2**62)} AS n, {literal(-1.25)} AS f")[0] == {"n": str(2**62), "f": -1.25}
    finally:
        http.close()


# -- the export stream check ---------------------------------------------------------------


ROW = b'{"event":"e","properties":{"time":1,"distinct_id":"u"}}'


def _split_everywhere(data: bytes) -> Iterator[list[bytes]]:
    """`data` as one chunk, as single bytes, and cut at every pair of positions."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for i, j in itertools.combinations(range(1, len(data)), 2):
        if (i + j) % 7 == 0:
            yield [data[:i], data[i:j], data[j:]]


TRAILERS = [b"\n" + ROW + b"\n" + ROW + b"\n", b"\n\n" + ROW + b"\n", b"\n" + ROW + b"\n\n"]


@pytest.mark.parametrize(
    ("rows", "trailer"),
    [(0, b""), (0, b"\n\n\n")] + [(rows, trailer) for rows in (1, 3) for trailer in TRAILERS],
)
def test_a_complete_stream_passes_whole(rows: int, trailer: bytes) -> None:
    """Rows, then the extremes trailer (a shard without rows gives empty extremes)."""
    body = b"".join(ROW + b"\n" for _ in range(rows))
    for chunks in _split_everywhere(body + trailer):
        assert b"".join(checked_lines(iter(chunks))) == body


ERROR = b"Code: 210, e.displayText() = DB::NetException: Connection refused (127.0.0.1:9000)\n\n, e.what() = DB::NetException\n"


@pytest.mark.parametrize("cut", [0, 5, len(ROW), len(ROW) + 1])
def test_an_error_inside_a_200_never_passes_as_rows(cut: int) -> None:
    """ClickHouse appends an error's text to a 200 once it has begun answering."""
    good = (ROW + b"\n") * 3
    body = good + (ROW + b"\n")[:cut] + ERROR
    for chunks in _split_everywhere(body):
        out = b""
        with pytest.raises(ClickHouseError):
            for piece in checked_lines(iter(chunks)):
                out += piece
        assert good.startswith(out)  # only whole rows, never the cut one or the error
        assert all(line.startswith(b'{"event":') for line in out.splitlines())


def test_an_error_before_any_row_raises() -> None:
    with pytest.raises(ClickHouseError):
        list(checked_lines(iter([ERROR])))
    with pytest.raises(ClickHouseError):
        list(checked_lines(iter([ROW + b"\n"])))  # no trailer: the stream was cut


# -- availability ----------------------------------------------------------------------------


def test_unreachable_clickhouse_is_store_unavailable() -> None:
    from tests.conftest import free_port

    target = ClickHouseTarget.parse(f"clickhouse://127.0.0.1:{free_port()}/db")
    with pytest.raises(StoreUnavailable):
        ClickHouseStore(target)
    with pytest.raises(StoreUnavailable):
        ClickHouseRegistry(target)


# -- profiles --------------------------------------------------------------------------------


def updates(items: list[dict[str, Any]]) -> list[ProfileUpdate]:
    valid = validate_updates(items, "engage", NOW_MS)
    assert not valid.errors
    return valid.updates


def test_profile_updates_from_several_servers_are_never_lost(cluster: ClickHouseCluster) -> None:
    """Four stores (as four servers would) add to one profile at once: every add counts."""
    url = fresh_url(cluster)
    stores = [ClickHouseStore(ClickHouseTarget.parse(url)) for _ in range(4)]
    try:
        stores[0].append_sync(1, batch(ev("x")))  # the events path shares the writer

        def work(n: int) -> None:
            import asyncio

            store = stores[n % len(stores)]
            for i in range(10):
                refused = asyncio.run(store.update_profiles(1, updates([
                    {"$distinct_id": "u1", "$add": {"n": 1}, "$ignore_time": True},
                    {"$distinct_id": "u1", "$union": {"seen": [f"{n}-{i}"]}, "$ignore_time": True},
                ])))
                assert refused == []

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
        for store in stores:
            profile = store.get_profile(1, "user", "u1")
            assert profile is not None
            assert profile["n"] == 80
            assert sorted(profile["seen"]) == sorted(f"{n}-{i}" for n in range(8) for i in range(10))
    finally:
        for store in stores:
            store.close()


def test_profile_log_applies_in_order_and_deletes(store: ClickHouseStore) -> None:
    import asyncio

    async def run() -> None:
        await store.update_profiles(1, updates([
            {"$distinct_id": "a", "$set": {"x": 1}, "$time": 1_700_000_000},
            {"$distinct_id": "a", "$set_once": {"x": 2, "y": 2}, "$time": 1_700_000_000},
        ]))
        await store.update_profiles(1, updates([{"$distinct_id": "a", "$unset": ["y"], "$ignore_time": True}]))
        await store.update_profiles(1, updates([{"$distinct_id": "b", "$set": {"z": 1}}]))
        await store.update_profiles(1, updates([{"$distinct_id": "b", "$delete": ""}]))

    asyncio.run(run())
    assert store.get_profile(1, "user", "a") == {"$last_seen": "2023-11-14T22:13:20", "x": 1}
    assert store.get_profile(1, "user", "b") is None
    assert store.get_profile(2, "user", "a") is None


def test_profile_limits_are_refused(store: ClickHouseStore) -> None:
    import asyncio

    many = {f"p{i}": i for i in range(2000)}
    errors = asyncio.run(store.update_profiles(1, updates([
        {"$distinct_id": "a", "$set": {"first": 1}, "$ignore_time": True},
        {"$distinct_id": "a", "$set": many, "$ignore_time": True},
    ])))
    assert [(e.index, e.field) for e in errors] == [(1, "profile")]
    assert store.get_profile(1, "user", "a") == {"first": 1}


# -- registry --------------------------------------------------------------------------------


def test_project_ids_are_unique_under_concurrent_creation(cluster: ClickHouseCluster) -> None:
    url = fresh_url(cluster)
    registries = [ClickHouseRegistry(ClickHouseTarget.parse(url)) for _ in range(6)]
    try:
        with ThreadPoolExecutor(6) as pool:
            created = list(pool.map(lambda n: registries[n].create_project(f"p{n}"), range(6)))
        ids = [p.id for p in created]
        assert len(set(ids)) == 6
        listed = registries[0].list_projects()
        assert sorted((p.id, p.name, p.token) for p in listed) == sorted((p.id, p.name, p.token) for p in created)
        # Creators that collide on an id both step aside: ids may skip, never repeat.
        assert registries[1].create_project("later").id == max(ids) + 1
    finally:
        for registry in registries:
            registry.close()


def test_registry_settings_accounts_and_version(cluster: ClickHouseCluster) -> None:
    url = fresh_url(cluster)
    one, two = ClickHouseRegistry(ClickHouseTarget.parse(url)), ClickHouseRegistry(ClickHouseTarget.parse(url))
    try:
        empty = one.version()
        project = one.create_project("Web", time_zone="Europe/Paris")
        after_create = two.version()
        assert after_create != empty
        # Two settings changed at once from two servers: neither undoes the other.
        threads = [
            threading.Thread(target=one.update_project, args=(project.id,), kwargs={"time_zone": "Asia/Tokyo"}),
            threading.Thread(target=two.update_project, args=(project.id,), kwargs={"legacy_local_time": True}),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        [shown] = two.list_projects()
        assert (shown.time_zone, shown.legacy_local_time) == ("Asia/Tokyo", True)
        assert one.version() != after_create
        username, secret = two.create_service_account(project.id, "ci")
        from eventkeep.projects.model import hash_secret

        assert one.service_account_hashes() == {username: (project.id, hash_secret(secret))}
        assert one.list_projects()[0].service_accounts == (username,)
        with pytest.raises(KeyError):
            one.update_project(999, time_zone="UTC")
        with pytest.raises(ValueError):
            one.create_project("x", time_zone="Mars/Olympus")
    finally:
        one.close()
        two.close()


def test_registry_version_survives_a_brief_outage(cluster: ClickHouseCluster) -> None:
    registry = ClickHouseRegistry(ClickHouseTarget.parse(fresh_url(cluster)))
    try:
        seen = registry.version()
        registry._http.close()
        registry._http = ClickHouseHTTP("http://127.0.0.1:9")  # nothing listens there
        assert registry.version() == seen  # cached credentials keep working
        started = time.monotonic()
        assert registry.version() == seen  # and the next checks do not wait on the network
        assert time.monotonic() - started < 0.01
        with pytest.raises(StoreUnavailable):
            registry.list_projects()
    finally:
        registry.close()


# -- schema ----------------------------------------------------------------------------------


def test_migrate_creates_every_table_on_every_node_once(cluster: ClickHouseCluster) -> None:
    target = ClickHouseTarget.parse(fresh_url(cluster))
    first = migrate(target)
    assert [(before, after) for _, before, after in first] == [(0, SCHEMA_VERSION)] * 2
    again = migrate(target)
    assert [(before, after) for _, before, after in again] == [(SCHEMA_VERSION, SCHEMA_VERSION)] * 2
    for node in cluster.nodes:
        tables = set(node.query(f"SHOW TABLES FROM `{target.database}`").split())
        assert tables == {
            "events", "events_local", "profile_updates", "profile_updates_local", "registry",
            "registry_local", "schema_migrations",
        }


def test_store_urls() -> None:
    target = ClickHouseTarget.parse(
        "clickhouse://ek:p%40ss@ch1.example:8124/analytics?cluster=main&nodes=ch1:8124,ch2:8124"
        "&insert_timeout=5&replicated=1"
    )
    assert target.base_url == "http://ch1.example:8124" and target.database == "analytics"
    assert (target.user, target.password, target.cluster) == ("ek", "p@ss", "main")
    assert target.nodes == ("ch1:8124", "ch2:8124") and target.insert_timeout == 5 and target.replicated
    assert "p@ss" not in target.redacted()
    assert ClickHouseTarget.parse("clickhouse://h/").base_url == "http://h:8123"
    assert ClickHouseTarget.parse("clickhouses://h/db").base_url == "https://h:8443"
    for bad in ("clickhouse://h/db;drop", "clickhouse://h/db?cluster=a-b", "clickhouse://h/db?colour=red", "duckdb:///x"):
        with pytest.raises(ValueError):
            ClickHouseTarget.parse(bad)


def test_replicated_schema_uses_replicated_engines_with_macros() -> None:
    statements = "\n".join(schema_statements(ClickHouseTarget.parse("clickhouse://h/db?cluster=c&replicated=1")))
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/events_local', '{replica}', ingested_ms)" in statements
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/db/profile_updates_local', '{replica}')" in statements
    assert "Distributed(`c`, `db`, events_local, halfMD5(distinct_id))" in statements


def test_insert_timeout_is_bounded(cluster: ClickHouseCluster) -> None:
    """A ClickHouse that accepts connections but never answers fails the commit in time."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = fresh_url(cluster)
        store = ClickHouseStore(ClickHouseTarget.parse(url + "&insert_timeout=1"))
        try:
            store._writer_http.close()
            store._writer_http = ClickHouseHTTP(f"http://127.0.0.1:{port}", timeout=1)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.append_sync(1, batch(ev("a")))
            assert time.monotonic() - started < 10
        finally:
            store.close()


def test_commands_take_the_store_url(cluster: ClickHouseCluster) -> None:
    """`eventkeep migrate`, `projects` and `service-accounts` with --store (or EVENTKEEP_STORE)."""
    import os
    import subprocess
    import sys

    url = fresh_url(cluster)

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "eventkeep", *args], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **(env or {})})

    migrated = run("migrate", "--store", url)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.count(f"schema version 0 -> {SCHEMA_VERSION}") == 2
    assert run("migrate", "--store", url).stdout.count(f"-> {SCHEMA_VERSION}") == 2
    created = run("projects", "create", "Web", "--json", "--store", url)
    assert created.returncode == 0, created.stderr
    project = json.loads(created.stdout)
    account = run("service-accounts", "create", str(project["id"]), "--json", env={"EVENTKEEP_STORE": url})
    assert account.returncode == 0, account.stderr
    shown = json.loads(run("projects", "show", "Web", "--json", "--store", url).stdout)
    assert shown["token"] == project["token"] and shown["service_accounts"] == [json.loads(account.stdout)["username"]]
    down = run("migrate", "--store", "clickhouse://127.0.0.1:9/db")
    assert down.returncode != 0 and "migration failed" in down.stderr
