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


def open_registry(settings: Settings) -> ProjectRegistry:
    url = settings.store_url
    if url.startswith("duckdb:"):
        return SQLiteRegistry(_duckdb_path(url).parent / "projects.sqlite3")
    raise ValueError(f"unsupported store URL {url!r} (expected duckdb:///path/to/events.duckdb)")


def open_store(settings: Settings) -> tuple[EventStore, ProjectRegistry]:
    url = settings.store_url
    if url.startswith("duckdb:"):
        from eventkeep.store.duckdb import DuckDBStore

        registry = open_registry(settings)
        return DuckDBStore(_duckdb_path(url), memory_limit=settings.memory_limit), registry
    raise ValueError(f"unsupported store URL {url!r} (expected duckdb:///path/to/events.duckdb)")
