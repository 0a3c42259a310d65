"""Run the ASGI app under uvicorn with the store the settings name."""

from __future__ import annotations

import gc
import logging
import sys

import uvicorn

from eventkeep.http.app import AppState, create_app
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
    return AppState(settings=settings, store=store, registry=registry, credentials=CredentialCache(registry))


def _tune_garbage_collector() -> None:
    """Keep the cyclic collector off the ingest path.

    Each request decodes thousands of small dicts and lists. With the default thresholds
    the collector runs every 700 allocations and, every so often, walks every long-lived
    object too; that cost several times the parse itself. Objects made at start-up are
    frozen out of its view, and it runs far less often (request data is freed by
    reference counting; there are few cycles to find).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def serve(settings: Settings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    workers = settings.workers
    if settings.store_url.startswith("duckdb:") and workers != 1:
        log.warning("the DuckDB store allows one server process; ignoring --workers %d", workers)
    try:
        state = build_state(settings)
    except StoreUnavailable as exc:
        print(f"eventkeep: {exc}", file=sys.stderr)
        return 1
    app = create_app(state)
    _tune_garbage_collector()
    scheme = "https" if settings.tls_cert else "http"
    print(f"eventkeep: serving on {scheme}://{settings.host}:{settings.port} ({settings.store_url})", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # request lines can carry api_key= in the query: never log them
        log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_keep_alive=30,
        lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0
