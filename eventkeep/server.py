"""Run the ASGI app under uvicorn with the store the settings name."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette

from eventkeep.collector import tune_for_batches
from eventkeep.http.app import AppState, create_app
from eventkeep.http.checkers import EventCheckers
from eventkeep.projects.registry import CredentialCache
from eventkeep.settings import Settings
from eventkeep.store.base import StoreUnavailable
from eventkeep.store.open import open_store

log = logging.getLogger("eventkeep")


def build_state(settings: Settings) -> AppState:
    store, registry = open_store(settings)
    if not registry.list_projects():
        project = registry.create_project("Default project")
        # Printed once, to the console of whoever started the server: like Mixpanel's
        # project settings page, not a log line.
        print(
            f"eventkeep: created project {project.id} ({project.name})\n"
            f"  token:      {project.token}\n"
            f"  API secret: {project.secret}\n"
            f"  (see them again with: eventkeep projects show {project.id})",
            flush=True,
        )
    return AppState(
        settings=settings,
        store=store,
        registry=registry,
        credentials=CredentialCache(registry),
        checkers=EventCheckers(settings.ingest_process_count),
    )


def app_factory() -> Starlette:
    """The app of one worker process: `uvicorn --factory eventkeep.server:app_factory`.

    Worker processes start fresh (spawned, not forked with the parent's connections), so each
    reads its settings from EVENTKEEP_* variables and opens its own store and registry.
    """
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(build_state(settings))
    tune_for_batches()
    return app


def _serve_workers(settings: Settings, workers: int) -> int:
    """Several processes on one port (stores that allow it): settings go by environment."""
    for name in ("data_dir", "log_level", "memory_limit"):
        value = getattr(settings, name)
        if value is not None:
            os.environ[f"EVENTKEEP_{name.upper()}"] = str(value)
    os.environ["EVENTKEEP_STORE"] = settings.store_url
    scheme = "https" if settings.tls_cert else "http"
    print(
        f"eventkeep: serving on {scheme}://{settings.host}:{settings.port} with {workers} workers "
        f"({_redacted(settings.store_url)})",
        flush=True,
    )
    uvicorn.run(
        "eventkeep.server:app_factory",
        factory=True,
        workers=workers,
        **_uvicorn_options(settings),
    )
    return 0


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What one worker and many workers share."""
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,  # request lines can carry api_key= in the query: never log them
        "log_level": settings.log_level,
        "ssl_certfile": str(settings.tls_cert) if settings.tls_cert else None,
        "ssl_keyfile": str(settings.tls_key) if settings.tls_key else None,
        "timeout_keep_alive": 30,
        "lifespan": "on",
    }


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    workers = settings.workers
    if settings.store_url.startswith("duckdb:") and workers != 1:
        log.warning("the DuckDB store allows one server process; ignoring --workers %d", workers)
        workers = 1
    try:
        state = build_state(settings)
    except StoreUnavailable as exc:
        print(f"eventkeep: {exc}", file=sys.stderr)
        return 1
    if workers > 1:
        # The schema and the first project exist now; each worker opens its own store.
        state.store.close()
        state.registry.close()
        return _serve_workers(settings, workers)
    app = create_app(state)
    tune_for_batches()
    scheme = "https" if settings.tls_cert else "http"
    print(f"eventkeep: serving on {scheme}://{settings.host}:{settings.port} ({_redacted(settings.store_url)})", flush=True)
    config = uvicorn.Config(
        app,
        **_uvicorn_options(settings),
    )
    uvicorn.Server(config).run()
    return 0


def _redacted(url: str) -> str:
    """A store URL fit for the console: no password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))
