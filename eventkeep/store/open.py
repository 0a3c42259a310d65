"""Open the store and project registry a store URL names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from eventkeep.projects.registry import ProjectRegistry
from eventkeep.projects.sqlite import SQLiteRegistry
from eventkeep.settings import Settings
from eventkeep.store.base import EventStore


def _duckdb_path(url: str) -> Path:
    parsed = urlparse(url)
    return Path(parsed.netloc + parsed.path) if parsed.netloc else Path(parsed.path)


_EXPECTED = "expected duckdb:///path/to/events.duckdb or clickhouse://HOST:HTTP_PORT/DATABASE"


def open_registry(settings: Settings) -> ProjectRegistry:
    url = settings.store_url
    if url.startswith("duckdb:"):
        return SQLiteRegistry(_duckdb_path(url).parent / "projects.sqlite3")
    if url.startswith(("clickhouse:", "clickhouses:")):
        from eventkeep.projects.clickhouse import ClickHouseRegistry
        from eventkeep.store.clickhouse_schema import ClickHouseTarget

        return ClickHouseRegistry(ClickHouseTarget.parse(url))
    raise ValueError(f"unsupported store URL {url!r} ({_EXPECTED})")


def open_store(settings: Settings) -> tuple[EventStore, ProjectRegistry]:
    url = settings.store_url
    if url.startswith("duckdb:"):
        from eventkeep.store.duckdb import DuckDBStore

        registry = open_registry(settings)
        return DuckDBStore(_duckdb_path(url), memory_limit=settings.memory_limit), registry
    if url.startswith(("clickhouse:", "clickhouses:")):
        from eventkeep.store.clickhouse import ClickHouseStore
        from eventkeep.store.clickhouse_schema import ClickHouseTarget

        target = ClickHouseTarget.parse(url)
        store = ClickHouseStore(target)  # creates or upgrades the schema first
        try:
            return store, open_registry(settings)
        except BaseException:
            store.close()
            raise
    raise ValueError(f"unsupported store URL {url!r} ({_EXPECTED})")
