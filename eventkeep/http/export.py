"""Raw event export: GET/POST /api/2.0/export (spec §5), streamed JSONL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
from isal import isal_zlib
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from eventkeep.auth import authenticate, parse_authorization
from eventkeep.errors import ApiError, bad_request
from eventkeep.http.body import read_body
from eventkeep.ingest.payload import parse_form
from eventkeep.projects.model import Project
from eventkeep.store.base import ScanQuery

log = logging.getLogger("eventkeep.export")

MAX_LIMIT = 100_000
MAX_FORM_BYTES = 64 * 1024
# A last line no JSON parser accepts: a client reading line by line notices the cut.
TERMINATED_EARLY = b"export terminated early\n"


def _error(request: Request, error: ApiError) -> Response:
    body = {"request": str(request.url.path), "error": error.message}
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return Response(orjson.dumps(body), error.status, headers=headers, media_type="application/json")


def _parse_date(params: dict[str, str], name: str) -> date:
    raw = params.get(name)
    if not raw:
        raise bad_request(f"'{name}' is a required parameter (yyyy-mm-dd)")
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        raise bad_request(f"'{name}' must be a date in yyyy-mm-dd format, got {raw!r}") from None


def _local_midnight_ms(day: date, zone: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=zone).timestamp() * 1000)


def _parse_events(raw: str | None) -> tuple[str, ...] | None:
    if raw is None or raw == "":
        return None
    stripped = raw.strip()
    if stripped.startswith("["):
        try:
            names = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            raise bad_request("'event' must be a JSON array of event names") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad_request("'event' must be a JSON array of event names (strings)")
        return tuple(names)
    return (raw,)


def _parse_bool(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "true", "yes")


def build_query(project: Project, params: dict[str, str]) -> tuple[ScanQuery, bool]:
    """Read export parameters into a ScanQuery; dates are days in the project's time zone."""
    from_day = _parse_date(params, "from_date")
    to_day = _parse_date(params, "to_date")
    if to_day < from_day:
        raise bad_request(f"'to_date' ({to_day}) is before 'from_date' ({from_day})")
    zone = ZoneInfo(project.time_zone)
    limit = None
    if params.get("limit"):
        try:
            limit = int(params["limit"])
        except ValueError:
            raise bad_request("'limit' must be an integer") from None
        if limit > MAX_LIMIT or limit < 0:
            raise bad_request(f"'limit' must be between 0 and {MAX_LIMIT}")
    where = None
    if params.get("where", "").strip():
        from eventkeep.query import WhereSyntaxError, parse_where

        try:
            where = parse_where(params["where"])
        except WhereSyntaxError as exc:
            raise bad_request(f"invalid 'where' expression: {exc}") from None
    query = ScanQuery(
        project_id=project.id,
        from_ms=_local_midnight_ms(from_day, zone),
        to_ms=_local_midnight_ms(to_day + timedelta(days=1), zone),
        events=_parse_events(params.get("event")),
        where=where,
        limit=limit,
    )
    return query, _parse_bool(params.get("time_in_ms"))


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
