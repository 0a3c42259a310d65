"""ClickHouse plumbing shared by the event store and the project registry.

- `ClickHouseTarget`: what a `clickhouse://` store URL names.
- `ClickHouseHTTP`: a small client for ClickHouse's HTTP interface. Every failure to talk to
  ClickHouse (refused connection, timeout, an error answer) becomes `ClickHouseError`, a
  `StoreUnavailable`, so requests answer 503 with Retry-After and clients retry.
- The schema and its migrations, applied by eventkeep itself on every node of the cluster.

Everything here runs on ClickHouse 18.16 (Debian's package, the only one CI can install): no
DateTime64, Map or JSONExtract, no query parameters over HTTP (values are inlined as literals,
quoted by `literal`), and no ON CLUSTER without ZooKeeper (so eventkeep connects to each node
to create its tables).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import httpx

from eventkeep.store.base import StoreUnavailable

log = logging.getLogger("eventkeep.store.clickhouse")
# httpx logs every request at INFO: one line per insert and per query is noise here.
logging.getLogger("httpx").setLevel(logging.WARNING)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DEFAULT_INSERT_TIMEOUT = 30.0
DEFAULT_QUERY_TIMEOUT = 300.0
CONNECT_TIMEOUT = 3.0


class ClickHouseError(StoreUnavailable):
    """ClickHouse refused or failed a request, or could not be reached."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def identifier(name: str) -> str:
    """A database, table or cluster name, checked and back-quoted (names are never user data)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r} (letters, digits and _ only)")
    return f"`{name}`"


_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0", "\b": "\\b", "\f": "\\f"}
_NEEDS_ESCAPE = re.compile(r"[\\'\n\r\t\0\b\f]")


def literal(value: Any) -> str:
    """A SQL literal for ClickHouse. HTTP queries on 18.16 take no bound parameters.

    Strings are quoted with every character ClickHouse's lexer treats specially escaped, so
    any text a client sends (event names, ids) stays a string.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("non-finite floats have no literal")
        return repr(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogatepass")
    if isinstance(value, str):
        return "'" + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group(0)], value) + "'"
    if isinstance(value, tuple | list):
        return "(" + ", ".join(literal(v) for v in value) + ")"
    raise TypeError(f"no ClickHouse literal for {type(value).__name__}")


@dataclass(frozen=True)
class ClickHouseTarget:
    """A parsed store URL: `clickhouse://[user[:password]@]HOST:HTTP_PORT/DATABASE[?options]`.

    Options: `cluster=NAME` (a `remote_servers` cluster: events are sharded over it);
    `nodes=H1:P1,H2:P2` (HTTP addresses of every node, where eventkeep creates its tables;
    default: each host of the cluster at this URL's port); `replicated=1` (shards have
    replicas: Replicated* engines with the `{shard}`/`{replica}` macros); `secure=1` (https);
    `insert_timeout=SECONDS`, `query_timeout=SECONDS`.
    """

    base_url: str
    database: str
    user: str | None = None
    password: str | None = None
    cluster: str | None = None
    nodes: tuple[str, ...] = ()
    replicated: bool = False
    insert_timeout: float = DEFAULT_INSERT_TIMEOUT
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    secure: bool = False

    @classmethod
    def parse(cls, url: str) -> ClickHouseTarget:
        parsed = urlparse(url)
        if parsed.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError(f"not a clickhouse:// URL: {url!r}")
        if not parsed.hostname:
            raise ValueError(f"the store URL names no host: {url!r}")
        options = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(options) - {
            "cluster", "nodes", "replicated", "secure", "insert_timeout", "query_timeout", "user", "password"
        }
        if unknown:
            raise ValueError(f"unknown store URL option(s): {', '.join(sorted(unknown))}")
        secure = parsed.scheme == "clickhouses" or options.get("secure", "0") in ("1", "true")
        port = parsed.port or (8443 if secure else 8123)
        host = parsed.hostname
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        database = unquote(parsed.path.lstrip("/")) or "eventkeep"
        identifier(database)
        cluster = options.get("cluster") or None
        if cluster is not None:
            identifier(cluster)
        nodes = tuple(n.strip() for n in options.get("nodes", "").split(",") if n.strip())
        return cls(
            base_url=f"{'https' if secure else 'http'}://{host}:{port}",
            database=database,
            user=unquote(parsed.username) if parsed.username else options.get("user"),
            password=unquote(parsed.password) if parsed.password else options.get("password"),
            cluster=cluster,
            nodes=nodes,
            replicated=options.get("replicated", "0") in ("1", "true"),
            insert_timeout=float(options.get("insert_timeout", DEFAULT_INSERT_TIMEOUT)),
            query_timeout=float(options.get("query_timeout", DEFAULT_QUERY_TIMEOUT)),
            secure=secure,
        )

    def node_url(self, address: str) -> str:
        return f"{'https' if self.secure else 'http'}://{address}"

    def redacted(self) -> str:
        """For logs and messages: the URL without its password."""
        who = f"{self.user}@" if self.user else ""
        return f"{self.base_url.split('://', 1)[0]}://{who}{self.base_url.split('://', 1)[1]}/{self.database}"


@dataclass
class ClickHouseHTTP:
    """Statements over ClickHouse's HTTP interface; one connection pool, thread-safe."""

    base_url: str
    user: str | None = None
    password: str | None = None
    timeout: float = DEFAULT_QUERY_TIMEOUT
    _client: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        auth = httpx.BasicAuth(self.user or "default", self.password or "") if (self.user or self.password) else None
        self._client = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            timeout=httpx.Timeout(self.timeout, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    @staticmethod
    def for_target(target: ClickHouseTarget, base_url: str | None = None, timeout: float | None = None) -> ClickHouseHTTP:
        return ClickHouseHTTP(
            base_url or target.base_url, target.user, target.password,
            timeout=target.query_timeout if timeout is None else timeout,
        )

    def _params(self, settings: Mapping[str, Any] | None, timeout: float) -> dict[str, str]:
        # ClickHouse stops the query itself a little before the client would give up.
        params = {"max_execution_time": str(max(1, int(timeout)))}
        if settings:
            params.update({k: str(v) for k, v in settings.items()})
        return params

    def execute(
        self,
        sql: str,
        *,
        data: bytes | None = None,
        settings: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Run one statement; with `data`, `sql` is an INSERT whose rows are the body."""
        limit = self.timeout if timeout is None else timeout
        params = self._params(settings, limit)
        try:
            if data is None:
                response = self._client.post("/", params=params, content=sql.encode(), timeout=limit)
            else:
                params["query"] = sql
                response = self._client.post("/", params=params, content=data, timeout=limit)
        except httpx.HTTPError as exc:
            raise ClickHouseError(f"ClickHouse at {self.base_url} is unreachable: {exc!r}") from exc
        if response.status_code != 200:
            raise _error_from(response.status_code, response.text, self.base_url)
        return response.content

    def json_rows(self, sql: str, *, settings: Mapping[str, Any] | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
        import orjson

        body = self.execute(sql + "\nFORMAT JSONEachRow", settings=settings, timeout=timeout)
        return [orjson.loads(line) for line in body.splitlines() if line]

    def scalar(self, sql: str, *, timeout: float | None = None) -> str:
        return self.execute(sql + "\nFORMAT TabSeparated", timeout=timeout).decode().strip()

    @contextmanager
    def stream(self, sql: str, *, settings: Mapping[str, Any] | None = None, timeout: float | None = None) -> Iterator[Iterator[bytes]]:
        """Stream a SELECT's raw output. Errors after the first byte arrive *in* the body
        (ClickHouse has already sent its 200), so callers must check what they read."""
        limit = self.timeout if timeout is None else timeout
        params = self._params(settings, limit)
        try:
            with self._client.stream("POST", "/", params=params, content=sql.encode(), timeout=limit) as response:
                if response.status_code != 200:
                    response.read()
                    raise _error_from(response.status_code, response.text, self.base_url)
                yield _guard_transport(response.iter_raw(), self.base_url)
        except httpx.HTTPError as exc:
            raise ClickHouseError(f"ClickHouse at {self.base_url} failed mid-stream: {exc!r}") from exc

    def close(self) -> None:
        self._client.close()


def _guard_transport(chunks: Iterator[bytes], base_url: str) -> Iterator[bytes]:
    try:
        yield from chunks
    except httpx.HTTPError as exc:
        raise ClickHouseError(f"ClickHouse at {base_url} failed mid-stream: {exc!r}") from exc


_CODE = re.compile(r"Code: (\d+)")


def _error_from(status: int, text: str, base_url: str) -> ClickHouseError:
    match = _CODE.search(text)
    code = int(match.group(1)) if match else None
    first = text.strip().splitlines()[0] if text.strip() else f"HTTP {status}"
    return ClickHouseError(f"ClickHouse at {base_url} answered {status}: {first[:500]}", code)


# -- schema ------------------------------------------------------------------------------

SCHEMA_VERSION = 1

# Separates the raw JSON texts of top-level property values in `prop_raw`. JSON text never
# holds a raw control character (they are always escaped inside strings), so it cannot clash.
VALUE_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Tables:
    """Fully qualified names: `*_local` hold the data on each node; the plain names are what
    eventkeep reads and writes (Distributed tables over the cluster, or the local ones)."""

    database: str
    sharded: bool

    def _name(self, table: str) -> str:
        return f"{identifier(self.database)}.{identifier(table)}"

    @property
    def events(self) -> str:
        return self._name("events" if self.sharded else "events_local")

    @property
    def profile_updates(self) -> str:
        return self._name("profile_updates" if self.sharded else "profile_updates_local")

    @property
    def registry(self) -> str:
        return self._name("registry" if self.sharded else "registry_local")

    @property
    def migrations(self) -> str:
        return self._name("schema_migrations")


EVENT_COLUMNS = """
    project_id UInt32,
    event String,
    distinct_id String,
    time_ms Int64,
    insert_id String,
    ingested_ms Int64,
    properties String,
    prop_keys Array(String),
    prop_raw String"""

PROFILE_COLUMNS = """
    project_id UInt32,
    kind String,
    profile_id String,
    ingested_ms Int64,
    writer String,
    seq UInt64,
    update String"""

REGISTRY_COLUMNS = """
    kind String,
    key String,
    claim String,
    value String,
    updated Int64"""


def _engine(target: ClickHouseTarget, family: str, table: str, *args: str) -> str:
    if target.replicated:
        path = "'/clickhouse/tables/{shard}/" + target.database + "/" + table + "'"
        return f"Replicated{family}(" + ", ".join([path, "'{replica}'", *args]) + ")"
    return f"{family}({', '.join(args)})"


def schema_statements(target: ClickHouseTarget) -> list[str]:
    """Version 1 of the schema, for one node. Every statement is idempotent.

    events_local: a ReplacingMergeTree whose sorting key holds the dedup key (project, event,
    distinct_id, time, $insert_id) with the ingestion time as version, so the latest copy
    wins; the day (a function of time_ms) leads after the project so time ranges read few
    granules. Partitioned by month. `properties` is the exact JSON text; `prop_keys` and
    `prop_raw` (the raw JSON of each top-level value) let filters reach a top-level key
    without parsing the whole document, exactly (18.16 has no JSON functions but the
    approximate visitParam* ones). `prop_values` is computed on read.

    profile_updates_local: an append-only log of profile updates, folded in order on read.
    registry_local: projects, service accounts and settings (see eventkeep.projects.clickhouse).
    """
    db = identifier(target.database)
    sharded = target.cluster is not None
    statements = [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.events_local ({EVENT_COLUMNS},
    prop_values Array(String) ALIAS splitByChar('{VALUE_SEPARATOR}', prop_raw)
) ENGINE = {_engine(target, "ReplacingMergeTree", "events_local", "ingested_ms")}
PARTITION BY toYYYYMM(toDateTime(intDiv(time_ms, 1000), 'UTC'))
ORDER BY (project_id, intDiv(time_ms, 86400000), event, distinct_id, time_ms, insert_id)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.profile_updates_local ({PROFILE_COLUMNS}
) ENGINE = {_engine(target, "MergeTree", "profile_updates_local")}
ORDER BY (project_id, kind, profile_id, ingested_ms, writer, seq)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.registry_local ({REGISTRY_COLUMNS}
) ENGINE = {_engine(target, "ReplacingMergeTree", "registry_local", "updated")}
ORDER BY (kind, key, claim)""",
    ]
    if sharded:
        assert target.cluster is not None
        cluster = identifier(target.cluster)
        # Columns are declared, not copied with AS: 18.16 would copy the ALIAS column and
        # then refuse inserts. Events and profiles are sharded by id, so every copy of an
        # event (and every update of a profile) lands on one shard and FINAL there is exact;
        # the registry has a constant key: it all lives on the first shard.
        statements += [
            f"""CREATE TABLE IF NOT EXISTS {db}.events ({EVENT_COLUMNS}
) ENGINE = Distributed({cluster}, {db}, events_local, halfMD5(distinct_id))""",
            f"""CREATE TABLE IF NOT EXISTS {db}.profile_updates ({PROFILE_COLUMNS}
) ENGINE = Distributed({cluster}, {db}, profile_updates_local, halfMD5(profile_id))""",
            f"""CREATE TABLE IF NOT EXISTS {db}.registry ({REGISTRY_COLUMNS}
) ENGINE = Distributed({cluster}, {db}, registry_local, 0)""",
        ]
    return statements


MIGRATIONS: dict[int, Any] = {1: schema_statements}


def node_addresses(target: ClickHouseTarget, http: ClickHouseHTTP) -> list[str]:
    """The HTTP address of every node that needs eventkeep's tables."""
    entry = target.base_url.split("://", 1)[1]
    if target.cluster is None:
        return [entry]
    hosts = http.json_rows(
        f"SELECT DISTINCT host_name, port FROM system.clusters WHERE cluster = {literal(target.cluster)}"
    )
    if not hosts:
        raise ValueError(f"ClickHouse at {target.base_url} knows no cluster {target.cluster!r} (see remote_servers)")
    if target.nodes:
        if len(target.nodes) != len(hosts):
            log.warning(
                "cluster %s has %d nodes but the store URL's nodes= lists %d",
                target.cluster, len(hosts), len(target.nodes),
            )
        return list(target.nodes)
    port = entry.rsplit(":", 1)[1]
    return [f"{row['host_name']}:{port}" for row in hosts]


def _applied(http: ClickHouseHTTP, tables: Tables) -> int:
    exists = http.scalar(
        f"SELECT count() FROM system.tables WHERE database = {literal(tables.database)} "
        "AND name = 'schema_migrations'"
    )
    if exists == "0":
        return 0
    return int(http.scalar(f"SELECT max(version) FROM {tables.migrations}") or 0)


def migrate_node(target: ClickHouseTarget, http: ClickHouseHTTP) -> int:
    """Bring one node's schema up to SCHEMA_VERSION; returns the version it had before."""
    tables = Tables(target.database, sharded=target.cluster is not None)
    before = _applied(http, tables)
    if before >= SCHEMA_VERSION:
        return before
    http.execute(f"CREATE DATABASE IF NOT EXISTS {identifier(target.database)}")
    http.execute(
        f"CREATE TABLE IF NOT EXISTS {tables.migrations} (version UInt32, applied_ms Int64) "
        "ENGINE = MergeTree ORDER BY version"
    )
    for version in range(before + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[version](target):
            http.execute(statement)
        http.execute(
            f"INSERT INTO {tables.migrations} VALUES ({version}, {int(time.time() * 1000)})"
        )
    return before


def migrate(target: ClickHouseTarget, *, strict: bool = True) -> list[tuple[str, int, int | None]]:
    """Create or upgrade the schema on every node: (address, version before, version after).

    `strict` (the `eventkeep migrate` command) fails when a node cannot be reached; the server
    at start-up only warns, so one shard being down does not stop a stateless server from
    starting, but the entry node (the URL's host) must be up.
    """
    entry = ClickHouseHTTP.for_target(target, timeout=60)
    results: list[tuple[str, int, int | None]] = []
    try:
        addresses = node_addresses(target, entry)
        for address in addresses:
            http = entry if target.node_url(address) == target.base_url else ClickHouseHTTP.for_target(
                target, target.node_url(address), timeout=60
            )
            try:
                before = migrate_node(target, http)
                results.append((address, before, SCHEMA_VERSION))
            except StoreUnavailable as exc:
                if strict or http is entry:
                    raise
                log.warning("could not migrate ClickHouse node %s (will retry on next start): %s", address, exc)
                results.append((address, -1, None))
            finally:
                if http is not entry:
                    http.close()
    finally:
        entry.close()
    return results


def ensure_schema(target: ClickHouseTarget, http: ClickHouseHTTP) -> None:
    """On open: a cheap check on the entry node, and a (lenient) migration when behind."""
    tables = Tables(target.database, sharded=target.cluster is not None)
    if _applied(http, tables) >= SCHEMA_VERSION:
        return
    migrate(target, strict=False)


def chunks_of(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
