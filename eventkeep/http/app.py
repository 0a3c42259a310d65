"""The ASGI application: routes, CORS for the browser SDK, and the shared state."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventkeep.http import export, ingest, profiles
from eventkeep.http.checkers import EventCheckers
from eventkeep.projects.registry import CredentialCache, ProjectRegistry
from eventkeep.settings import Settings
from eventkeep.store.base import EventStore

log = logging.getLogger("eventkeep.http")


class Counters:
    """Per-project counts of stored and refused events, so silent drops become visible."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_project: dict[int, dict[str, int]] = {}

    def add(self, project_id: int, *, stored: int, refused: int) -> None:
        with self._lock:
            counts = self.by_project.setdefault(project_id, {"stored": 0, "refused": 0})
            counts["stored"] += stored
            counts["refused"] += refused


@dataclass
class AppState:
    settings: Settings
    store: EventStore
    registry: ProjectRegistry
    credentials: CredentialCache
    checkers: EventCheckers = field(default_factory=lambda: EventCheckers(0))
    counters: Counters = field(default_factory=Counters)


class BrowserCORS:
    """Let the browser SDK post with credentials from any page, as api-js.mixpanel.com does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        origin = headers.get(b"origin")
        if origin is None or scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        cors = [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Origin"),
        ]
        if scope["method"] == "OPTIONS":
            requested = headers.get(b"access-control-request-headers", b"Content-Type")
            response_headers = [
                *cors,
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", requested),
                (b"access-control-max-age", b"86400"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": response_headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *cors]
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def stats(request: Request) -> Response:
    state: AppState = request.app.state.eventkeep
    return JSONResponse({str(k): v for k, v in state.counters.by_project.items()})


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """The last resort: a failure no handler caught still gets a well-formed answer."""
    log.error("unexpected failure on %s", request.url.path, exc_info=exc)
    return JSONResponse(
        {"code": 500, "error": "an internal error occurred; please retry", "status": "Internal Server Error"},
        status_code=500,
        headers={"Retry-After": "5"},
    )


def _both(path: str, endpoint: object, methods: list[str]) -> list[Route]:
    return [
        Route(path, endpoint, methods=methods),  # type: ignore[arg-type]
        Route(path + "/", endpoint, methods=methods),  # type: ignore[arg-type]
    ]


def create_app(state: AppState) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.checkers.start()
        yield
        state.checkers.close()
        state.store.close()
        state.registry.close()

    ingest_methods = ["GET", "POST"]
    routes = [
        *_both("/import", ingest.import_events, ingest_methods),
        *_both("/track", ingest.track_events, ingest_methods),
        *_both("/api/2.0/export", export.export_events, ["GET", "POST"]),
        *_both("/engage", profiles.engage, ingest_methods),
        *_both("/groups", profiles.groups, ingest_methods),
        *_both("/api/2.0/engage", profiles.query_profiles, ["GET", "POST"]),
        Route("/healthz", health),
        Route("/stats", stats),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BrowserCORS)],
        exception_handlers={Exception: unexpected_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False
    app.state.eventkeep = state
    return app
