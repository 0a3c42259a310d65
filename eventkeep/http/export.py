"""Raw event export: GET/POST /api/2.0/export (spec §5), streamed JSONL."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
from isal import isal_zlib
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from eventkeep.auth import authenticate, parse_authorization
from eventkeep.errors import ApiError
from eventkeep.exporting import build_query
from eventkeep.http.body import read_body
from eventkeep.ingest.payload import parse_form

log = logging.getLogger("eventkeep.export")

MAX_FORM_BYTES = 64 * 1024
# A last line no JSON parser accepts: a client reading line by line notices the cut.
TERMINATED_EARLY = b"export terminated early\n"


def _error(request: Request, error: ApiError) -> Response:
    body = {"request": str(request.url.path), "error": error.message}
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(orjson.dumps(body), error.status, headers=headers, media_type="application/json")


async def export_events(request: Request) -> Response:
    state = request.app.state.eventkeep
    params = dict(request.query_params)
    try:
        if request.method == "POST":
            params.update(parse_form(await read_body(request, MAX_FORM_BYTES)))
        credentials = parse_authorization(request.headers.get("authorization"))
        project = authenticate(state.credentials, credentials, params, "export")
        query, time_in_ms = build_query(project, params)
    except ApiError as error:
        return _error(request, error)
    local_zone = project.time_zone if project.legacy_local_time else None
    lines = state.store.export_lines(query, time_in_ms=time_in_ms, local_time_zone=local_zone)
    # Run the query up to its first chunk before answering, so that a failure there is a
    # clean error status rather than a 200 with a cut-off body.
    try:
        first = await run_in_threadpool(next, lines, b"")
    except ApiError as error:
        return _error(request, error)
    except Exception:
        log.exception("export query failed")
        return _error(request, ApiError(500, "the export query failed; please retry", retry_after=5))
    body = _guarded(first, lines)
    headers = {}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        body = _gzipped(body)
    return StreamingResponse(iterate_in_threadpool(body), headers=headers, media_type="text/plain; charset=utf-8")


def _guarded(first: bytes, lines: Iterator[bytes]) -> Iterator[bytes]:
    try:
        if first:
            yield first
        yield from lines
    except Exception:
        log.exception("export stream failed")
        yield TERMINATED_EARLY


def _gzipped(chunks: Iterator[bytes]) -> Iterator[bytes]:
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()
