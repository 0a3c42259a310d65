"""The ingestion endpoints: /import, /track (and, later, /engage, /groups)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from eventkeep.auth import authenticate, parse_authorization
from eventkeep.errors import (
    ApiError,
    RecordError,
    internal_error,
    store_unavailable,
)
from eventkeep.http.body import content_encoding, read_raw_body
from eventkeep.http.responses import Answer, Style, render_error, render_import, render_track
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.pipeline import CheckedEvents, EventRequest
from eventkeep.ingest.validate import Endpoint
from eventkeep.store.base import StoreUnavailable

if TYPE_CHECKING:
    from eventkeep.http.app import AppState

log = logging.getLogger("eventkeep.ingest")

TOKEN_MISSING = "token, missing or empty"
TOKEN_UNKNOWN = "token, not a known project token"


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.eventkeep
    return state


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _check(request: Request, endpoint: Endpoint) -> CheckedEvents:
    """Read the body and hand the rest (inflating included) to the checkers, inline or in
    worker processes: the event loop only moves the bytes as they were sent."""
    body = await read_raw_body(request)
    checked = await _state(request).checkers.check(
        EventRequest(
            endpoint=endpoint,
            body=body,
            content_encoding=content_encoding(request),
            content_type=request.headers.get("content-type", ""),
            query=dict(request.query_params),
            now_ms=_now_ms(),
            api_host=_api_host(request),
            client_host=request.client.host if request.client is not None else None,
        )
    )
    return checked


def _guess_style(request: Request) -> Style:
    """Before the body is read, guess the answer shape from what the request says of it."""
    content_type = request.headers.get("content-type", "").lower()
    if request.method == "GET" or "x-www-form-urlencoded" in content_type:
        return Style.LEGACY
    return Style.IMPORT_JSON


async def import_events(request: Request) -> Response:
    state = _state(request)
    style = _guess_style(request)
    answer = Answer.from_params(style, dict(request.query_params))
    try:
        credentials = parse_authorization(request.headers.get("authorization"))
        project = None
        if credentials is not None and style is Style.IMPORT_JSON:
            # Refuse strangers before reading megabytes. (Form requests may carry their
            # answer's shape, `verbose`, in the body, so they are read first.)
            project = authenticate(state.credentials, credentials, dict(request.query_params), "ingest")
        checked = await _check(request, "import")
        if checked.decoded:
            style = Style.LEGACY if checked.encoding == "form" else Style.IMPORT_JSON
            answer = Answer.from_params(style, checked.params)
            if project is None:
                project = authenticate(state.credentials, credentials, checked.params, "ingest")
        checked.raise_error()
        assert project is not None  # a body that decodes has been authenticated above
        strict = checked.params.get("strict", "1") != "0"
        batch = checked.batch
        await state.store.append(project.id, batch)
        state.counters.add(project.id, stored=len(batch), refused=len(batch.errors))
        return render_import(answer, len(batch), batch.errors, strict)
    except ApiError as error:
        return render_error(answer, error)
    except StoreUnavailable:
        return render_error(answer, store_unavailable())
    except Exception:
        log.exception("unexpected failure in /import")
        return render_error(answer, internal_error())


async def track_events(request: Request) -> Response:
    state = _state(request)
    answer = Answer.from_params(Style.LEGACY, dict(request.query_params))
    try:
        checked = await _check(request, "track")
        if checked.decoded:
            answer = Answer.from_params(Style.LEGACY, checked.params)
        checked.raise_error()
        batch = checked.batch
        default_project = optional_project(request, checked.params)
        per_project, token_errors = _route_by_token(state, batch, default_project)
        await asyncio.gather(
            *(state.store.append(project_id, part) for project_id, part in per_project.items())
        )
        stored = sum(len(part) for part in per_project.values())
        errors = sorted(batch.errors + token_errors, key=lambda e: e.index)
        for project_id, part in per_project.items():
            state.counters.add(project_id, stored=len(part), refused=0)
        if errors:
            log.info("/track refused %d of %d events: %s", len(errors), checked.count, errors[0].message)
        return render_track(answer, stored, errors)
    except ApiError as error:
        return render_error(answer, error)
    except StoreUnavailable:
        return render_error(answer, store_unavailable())
    except Exception:
        log.exception("unexpected failure in /track")
        return render_error(answer, internal_error())


def optional_project(request: Request, params: dict[str, str]) -> int | None:
    """Credentials are optional on /track, /engage and /groups; items without a token use them."""
    credentials = parse_authorization(request.headers.get("authorization"))
    if credentials is None and "api_key" not in params:
        return None
    project = authenticate(_state(request).credentials, credentials, params, "ingest")
    return project.id


class TokenRouter:
    """Resolves the tokens of one request to project ids, each token once.

    Items without a token go to the project the request's credentials name, if any.
    """

    def __init__(self, state: AppState, default_project: int | None) -> None:
        self._credentials = state.credentials
        self._resolved: dict[str | None, int | None] = {None: default_project, "": default_project}

    def project_for(self, token: str | None) -> int | None:
        if token not in self._resolved:
            project = self._credentials.by_token(token) if token else None
            self._resolved[token] = project.id if project is not None else None
        return self._resolved[token]


def _route_by_token(
    state: AppState, batch: ValidBatch, default_project: int | None
) -> tuple[dict[int, ValidBatch], list[RecordError]]:
    """Split a /track batch by the project each event's token names."""
    rows_by_project: dict[int, list[int]] = {}
    errors: list[RecordError] = []
    router = TokenRouter(state, default_project)
    insert_ids: list[str] | None = None
    for row, token in enumerate(batch.tokens):
        project_id = router.project_for(token)
        if project_id is None:
            message = TOKEN_UNKNOWN if token else TOKEN_MISSING
            if insert_ids is None:
                insert_ids = batch.insert_ids
            errors.append(RecordError(batch.indexes[row], insert_ids[row], "properties.token", message))
            continue
        rows_by_project.setdefault(project_id, []).append(row)
    if len(rows_by_project) == 1 and not errors:
        return {next(iter(rows_by_project)): batch}, errors
    return {pid: batch.select(rows) for pid, rows in rows_by_project.items()}, errors


def _api_host(request: Request) -> str:
    return request.url.hostname or "localhost"
