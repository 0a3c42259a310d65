"""The profile endpoints: /engage (users), /groups (groups), and a profile lookup (spec §4).

Updates arrive in every encoding /track accepts and get /track's answers (`1`/`0`, verbose
JSON, verbose=2 as HTTP 400, `img`, `callback`). Each update names its project with `$token`.
Messages carry Mixpanel's "Engage API error: " / "Groups API error: " prefix, as observed
with verbose=2 (spec §4.2). This module only decodes and encodes: rules live in
`eventkeep.ingest.profiles`, storage in the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from eventkeep.auth import authenticate, parse_authorization
from eventkeep.errors import (
    ApiError,
    RecordError,
    bad_request,
    internal_error,
    store_unavailable,
    too_many_events,
)
from eventkeep.http.body import read_body
from eventkeep.http.ingest import TokenRouter, optional_project
from eventkeep.http.responses import Answer, Style, render_error, render_track
from eventkeep.ingest.payload import looks_like_form, parse_body, parse_form
from eventkeep.ingest.profiles import (
    MAX_UPDATES_PER_REQUEST,
    TOKEN_MISSING,
    TOKEN_UNKNOWN,
    USER_KIND,
    Endpoint,
    ProfileUpdate,
    group_kind,
    validate_updates,
)
from eventkeep.store.base import StoreUnavailable

if TYPE_CHECKING:
    from eventkeep.http.app import AppState

log = logging.getLogger("eventkeep.profiles")

_PREFIX: dict[Endpoint, str] = {"engage": "Engage API error: ", "groups": "Groups API error: "}
MAX_LOOKUP_IDS = 2000


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.eventkeep
    return state


async def engage(request: Request) -> Response:
    return await _update_profiles(request, "engage")


async def groups(request: Request) -> Response:
    return await _update_profiles(request, "groups")


async def _update_profiles(request: Request, endpoint: Endpoint) -> Response:
    state = _state(request)
    answer = Answer.from_params(Style.LEGACY, dict(request.query_params))
    try:
        body = await read_body(request)
        payload = parse_body(body, request.headers.get("content-type", ""), dict(request.query_params))
        answer = Answer.from_params(Style.LEGACY, payload.params)
        if len(payload.items) > MAX_UPDATES_PER_REQUEST:
            raise too_many_events(MAX_UPDATES_PER_REQUEST)
        valid = validate_updates(
            payload.items, endpoint, int(time.time() * 1000), payload.line_errors
        )
        default_project = optional_project(request, payload.params)
        per_project, token_errors = _route_by_token(state, valid.updates, default_project)
        refusals = await asyncio.gather(
            *(state.store.update_profiles(pid, part) for pid, part in per_project.items())
        )
        refused = [error for errors in refusals for error in errors]
        stored = sum(len(part) for part in per_project.values()) - len(refused)
        errors = sorted(valid.errors + token_errors + refused, key=lambda e: e.index)
        if errors:
            log.info("/%s refused %d of %d updates: %s", endpoint, len(errors), len(payload.items),
                     errors[0].message)
        return render_track(answer, stored, [_labelled(endpoint, e) for e in errors])
    except ApiError as error:
        return render_error(answer, ApiError(error.status, _PREFIX[endpoint] + error.message,
                                             retry_after=error.retry_after))
    except StoreUnavailable:
        return render_error(answer, store_unavailable())
    except Exception:
        log.exception("unexpected failure in /%s", endpoint)
        return render_error(answer, internal_error())


def _labelled(endpoint: Endpoint, error: RecordError) -> RecordError:
    return dataclasses.replace(error, message=_PREFIX[endpoint] + error.message)


def _route_by_token(
    state: AppState, updates: list[ProfileUpdate], default_project: int | None
) -> tuple[dict[int, list[ProfileUpdate]], list[RecordError]]:
    """Group updates by the project their `$token` names, keeping request order in each."""
    per_project: dict[int, list[ProfileUpdate]] = {}
    errors: list[RecordError] = []
    router = TokenRouter(state, default_project)
    for update in updates:
        token = update.token
        project_id = router.project_for(token)
        if project_id is None:
            errors.append(
                RecordError(update.index, None, "$token", TOKEN_UNKNOWN if token else TOKEN_MISSING)
            )
            continue
        per_project.setdefault(project_id, []).append(update)
    return per_project, errors


# -- reading profiles back -----------------------------------------------------------------


def _query_error(request: Request, error: ApiError) -> Response:
    """Query-API errors read `{"request": path, "error": message}`, as Mixpanel's do."""
    body = {"request": str(request.url.path), "error": error.message}
    return Response(orjson.dumps(body), error.status, media_type="application/json")


def _lookup_ids(params: dict[str, str]) -> list[str]:
    if params.get("distinct_ids"):
        try:
            ids = orjson.loads(params["distinct_ids"])
        except orjson.JSONDecodeError:
            raise bad_request("'distinct_ids' must be a JSON array of strings") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise bad_request("'distinct_ids' must be a JSON array of strings")
        if len(ids) > MAX_LOOKUP_IDS:
            raise bad_request(f"'distinct_ids' may name at most {MAX_LOOKUP_IDS} profiles")
        return list(dict.fromkeys(ids))
    if params.get("distinct_id"):
        return [params["distinct_id"]]
    raise bad_request(
        "'distinct_id' or 'distinct_ids' is required: this server looks profiles up by id only"
    )


async def query_profiles(request: Request) -> Response:
    """GET/POST /api/2.0/engage: profiles by id, in the engage query API's shape.

    Authenticated like export (API secret or service account). `data_group_id` names a group
    key (Mixpanel uses a numeric id for it) to read group profiles; ids are then group ids.
    """
    state = _state(request)
    try:
        params = dict(request.query_params)
        if request.method == "POST":
            raw = await read_body(request)
            if raw.strip() and looks_like_form(raw, request.headers.get("content-type", "")):
                params.update(parse_form(raw))
        credentials = parse_authorization(request.headers.get("authorization"))
        project = authenticate(state.credentials, credentials, params, "export")
        ids = _lookup_ids(params)
        group_key = params.get("data_group_id")
        kind = group_kind(group_key) if group_key else USER_KIND

        def lookup() -> list[dict[str, Any]]:
            results = []
            for profile_id in ids:
                properties = state.store.get_profile(project.id, kind, profile_id)
                if properties is not None:
                    results.append({"$distinct_id": profile_id, "$properties": properties})
            return results

        results = await run_in_threadpool(lookup)
    except ApiError as error:
        return _query_error(request, error)
    except StoreUnavailable:
        return _query_error(request, store_unavailable())
    body = {
        "page": 0,
        "page_size": MAX_LOOKUP_IDS,
        "results": results,
        "session_id": "",
        "status": "ok",
        "total": len(results),
    }
    return Response(orjson.dumps(body), 200, media_type="application/json")
