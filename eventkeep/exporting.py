"""Export requests as plain data: Mixpanel's export parameters read into a ScanQuery.

Shared by the HTTP endpoint and `eventkeep export`, so both read dates, event lists,
`where` and `limit` identically.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson

from eventkeep.errors import bad_request
from eventkeep.projects.model import Project
from eventkeep.store.base import ScanQuery

MAX_LIMIT = 100_000


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
