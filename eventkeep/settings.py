"""One settings object, read from command-line flags and EVENTKEEP_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("eventkeep-data")
    store: str | None = None  # a store URL; None means the DuckDB file under data_dir
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    memory_limit: str | None = None  # DuckDB's memory_limit, e.g. "2GB"
    # Worker processes that decode and check large ingest bodies; None: one per core (none
    # on one core, or when several server processes share the cores already).
    ingest_processes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ingest_process_count(self) -> int:
        if self.ingest_processes is not None:
            return max(0, self.ingest_processes)
        cores = os.cpu_count() or 1
        return cores if cores > 1 and self.workers <= 1 else 0

    @property
    def store_url(self) -> str:
        return self.store or f"duckdb://{(self.data_dir / 'events.duckdb').resolve()}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"EVENTKEEP_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Settings:
        """Command-line flags win over the environment; None means 'not given'."""
        given = {k: _convert(k, v) if isinstance(v, str) else v for k, v in overrides.items() if v is not None}
        return replace(self, **given)


def _convert(name: str, raw: str) -> Any:
    if name in ("port", "workers", "ingest_processes"):
        return int(raw)
    if name in ("data_dir", "tls_cert", "tls_key"):
        return Path(raw)
    return raw
