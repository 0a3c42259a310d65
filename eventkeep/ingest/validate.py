"""Validate and normalise events the way Mixpanel's ingestion does (spec §2.3, §2.6, §3.4).

Pure functions over plain data: a list of decoded events in, a columnar batch of storable
events and a list of per-record errors out. The same code validates on the server and in the
command-line import tool, so both refuse exactly the same events with the same words.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from eventkeep.errors import RecordError
from eventkeep.ingest import limits
from eventkeep.ingest.payload import OutOfRange

Endpoint = Literal["import", "track"]

_encode = msgspec.json.encode
_INSERT_ID_RE = re.compile(r"[A-Za-z0-9-]+")


TIME_MESSAGE = "'properties.time' is invalid: must be specified as seconds since epoch"
TIME_TOO_OLD = "'properties.time' is invalid: must not be before 1971-01-01"
TIME_FUTURE = "'properties.time' is invalid: must not be in the future"
TIME_TRACK_AGE = (
    "'properties.time' is invalid: events older than 5 days are not accepted by /track; "
    "send them to /import"
)
EVENT_BLANK = "'event' must not be missing or blank"
EVENT_TYPE = "'event' is invalid: must be a string"
NOT_OBJECT = "event is invalid: must be a JSON object with 'event' and 'properties'"
PROPERTIES_TYPE = "'properties' is invalid: must be a JSON object"
DISTINCT_ID_MISSING = "'properties.distinct_id' is invalid: must not be missing"
DISTINCT_ID_TYPE = "'properties.distinct_id' is invalid: must be a string or a number"
DISTINCT_ID_DISALLOWED = (
    "'properties.distinct_id' is invalid: {value!r} is a placeholder, not a user id"
)
INSERT_ID_CHARS = (
    "'$insert_id' is invalid: must only contain alphanumeric or hyphen '-' characters"
)
INSERT_ID_LENGTH = "'$insert_id' is invalid: must be at most 36 bytes"
INSERT_ID_TYPE = "'$insert_id' is invalid: must be a string"
INSERT_ID_DISALLOWED = "'$insert_id' is invalid: {value!r} is a placeholder, not an id"
TOO_MANY_PROPERTIES = "'properties' is invalid: an event must have fewer than 255 properties"
EVENT_TOO_LARGE = "event is invalid: must be smaller than 1MB of uncompressed JSON"


@dataclass(frozen=True, slots=True)
class IngestContext:
    """Facts about the request that validation needs; no HTTP objects."""

    endpoint: Endpoint
    now_ms: int
    api_host: str = "localhost"
    # /track?ip=1 with no distinct_id: Mixpanel derives one from the request's address.
    fallback_distinct_id: str | None = None


@dataclass(slots=True)
class ValidBatch:
    """Storable events in columns, plus the refusals. `indexes` maps rows to request order."""

    events: list[str] = field(default_factory=list)
    distinct_ids: list[str] = field(default_factory=list)
    times_ms: list[int] = field(default_factory=list)
    insert_ids: list[str] = field(default_factory=list)
    properties: list[bytes] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    ignored: int = 0

    def __len__(self) -> int:
        return len(self.events)


def validate_events(
    items: list[Any],
    ctx: IngestContext,
    parse_errors: dict[int, str] | None = None,
) -> ValidBatch:
    """Validate a decoded batch. Never raises for bad events: they become RecordErrors."""
    batch = ValidBatch()
    track = ctx.endpoint == "track"
    added = {
        "$mp_api_endpoint": ctx.api_host,
        "$mp_api_timestamp_ms": ctx.now_ms,
        "mp_processing_time_ms": ctx.now_ms,
    }
    if not track:
        added = {"$import": True, **added}
    for index, item in enumerate(items):
        if parse_errors and index in parse_errors:
            batch.errors.append(RecordError(index, None, "event", parse_errors[index]))
            continue
        outcome = _validate_one(item, index, ctx, track)
        if isinstance(outcome, RecordError):
            batch.errors.append(outcome)
        elif outcome is None:
            batch.ignored += 1
        else:
            name, distinct_id, time_ms, insert_id, props, token, size = outcome
            props.update(added)
            props["$mp_event_size"] = size
            batch.events.append(name)
            batch.distinct_ids.append(distinct_id)
            batch.times_ms.append(time_ms)
            batch.insert_ids.append(insert_id)
            batch.properties.append(_encode_properties(props))
            batch.tokens.append(token)
            batch.indexes.append(index)
    return batch


def _encode_properties(props: dict[str, Any]) -> bytes:
    try:
        return _encode(props)
    except (TypeError, OverflowError, UnicodeEncodeError):  # pragma: no cover - validated above
        import json

        return json.dumps(props, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _event_size(item: Any) -> int:
    try:
        return len(_encode(item))
    except (TypeError, OverflowError, UnicodeEncodeError, msgspec.EncodeError):
        import json

        return len(json.dumps(item, ensure_ascii=False, default=repr).encode("utf-8", "replace"))


def _validate_one(
    item: Any, index: int, ctx: IngestContext, track: bool
) -> RecordError | tuple[str, str, int, str, dict[str, Any], str | None, int] | None:
    """Check one event and turn its properties into what is stored.

    This runs once per event on the ingest path: plain scalars, by far the most common
    property values, take a fast path, and the properties are copied once and then edited
    in place (the caller's data is never changed).
    """
    if type(item) is not dict:
        return RecordError(index, None, "event", NOT_OBJECT)
    props = item.get("properties")
    if props is None:
        props = {}
    elif type(props) is not dict:
        return RecordError(index, None, "properties", PROPERTIES_TYPE)
    raw_insert_id = props.get("$insert_id")
    reported_id = raw_insert_id if type(raw_insert_id) is str else None

    ignore = props.get("$ignore")
    if ignore is not None and ignore is not False and ignore != "":
        return None

    name = item.get("event")
    if not isinstance(name, str):
        if name is None:
            return RecordError(index, reported_id, "event", EVENT_BLANK)
        return RecordError(index, reported_id, "event", EVENT_TYPE)
    if not name.strip():
        return RecordError(index, reported_id, "event", EVENT_BLANK)
    if not name.isascii() and has_invalid_utf8(name):
        return RecordError(index, reported_id, "event", "'event' is invalid: string should be valid utf8")

    # time
    raw_time = props.get("time")
    if raw_time is None and track and "time" not in props:
        time_ms = ctx.now_ms
    else:
        if not isinstance(raw_time, int | float) or isinstance(raw_time, bool):
            return RecordError(index, reported_id, "properties.time", TIME_MESSAGE)
        time_ms = round(raw_time) if abs(raw_time) > limits.MS_THRESHOLD else round(raw_time * 1000)
        if time_ms < limits.MIN_TIME_MS:
            return RecordError(index, reported_id, "properties.time", TIME_TOO_OLD)
        if time_ms > ctx.now_ms:
            if time_ms > ctx.now_ms + limits.MAX_FUTURE_MS:
                return RecordError(index, reported_id, "properties.time", TIME_FUTURE)
            time_ms = ctx.now_ms
        if track and time_ms < ctx.now_ms - limits.TRACK_MAX_AGE_MS:
            return RecordError(index, reported_id, "properties.time", TIME_TRACK_AGE)

    # distinct_id
    raw_id = props.get("distinct_id")
    distinct_id: str
    if isinstance(raw_id, str):
        distinct_id = raw_id
    elif raw_id is None:
        fallback = _fallback_distinct_id(props, ctx)
        if fallback is None:
            return RecordError(index, reported_id, "properties.distinct_id", DISTINCT_ID_MISSING)
        distinct_id = fallback
    elif isinstance(raw_id, int | float) and not isinstance(raw_id, bool):
        distinct_id = _encode(raw_id).decode()
    else:
        return RecordError(index, reported_id, "properties.distinct_id", DISTINCT_ID_TYPE)
    if len(distinct_id) <= 64 and distinct_id.strip().lower() in limits.DISALLOWED_IDS:
        message = DISTINCT_ID_DISALLOWED.format(value=distinct_id)
        return RecordError(index, reported_id, "properties.distinct_id", message)
    if not distinct_id.isascii() and has_invalid_utf8(distinct_id):
        message = "properties.distinct_id is invalid: string should be valid utf8"
        return RecordError(index, reported_id, "properties.distinct_id", message)

    # $insert_id
    if raw_insert_id is None:
        insert_id = uuid.uuid4().hex
    elif not isinstance(raw_insert_id, str):
        return RecordError(index, reported_id, "$insert_id", INSERT_ID_TYPE)
    else:
        insert_id = raw_insert_id
        if len(insert_id) > limits.MAX_INSERT_ID_BYTES:
            return RecordError(index, reported_id, "$insert_id", INSERT_ID_LENGTH)
        if not _INSERT_ID_RE.fullmatch(insert_id):
            return RecordError(index, reported_id, "$insert_id", INSERT_ID_CHARS)
        if insert_id.lower() in limits.DISALLOWED_IDS:
            message = INSERT_ID_DISALLOWED.format(value=insert_id)
            return RecordError(index, reported_id, "$insert_id", message)

    if len(props) >= limits.MAX_PROPERTIES:
        return RecordError(index, reported_id, "properties", TOO_MANY_PROPERTIES)

    size = _event_size(item)
    if size >= limits.MAX_EVENT_BYTES:
        return RecordError(index, reported_id, "event", EVENT_TOO_LARGE)

    props = dict(props)
    renamed: list[tuple[str, str]] = []
    for key, value in props.items():
        kind = type(value)
        if kind is str:
            if len(value) > limits.MAX_STRING_CHARS:
                props[key] = value = value[: limits.MAX_STRING_CHARS]
            if not value.isascii() and has_invalid_utf8(value):
                return _property_error(index, reported_id, key, "string should be valid utf8")
        elif kind is not int and kind is not float and kind is not bool and value is not None:
            try:
                props[key] = _clean(value, 1)
            except _Invalid as problem:
                return _property_error(index, reported_id, key, str(problem))
        if not key.isascii() and has_invalid_utf8(key):
            return RecordError(
                index, reported_id, "properties", "properties is invalid: property names should be valid utf8"
            )
        if len(key) > limits.MAX_STRING_CHARS:
            renamed.append((key, key[: limits.MAX_STRING_CHARS]))
    for old, new in renamed:
        props[new] = props.pop(old)

    token = props.pop("token", None)
    props.pop("time", None)
    props.pop("distinct_id", None)
    props["$insert_id"] = insert_id
    if len(name) > limits.MAX_STRING_CHARS:
        name = name[: limits.MAX_STRING_CHARS]
    if len(distinct_id) > limits.MAX_STRING_CHARS:
        distinct_id = distinct_id[: limits.MAX_STRING_CHARS]
    return name, distinct_id, time_ms, insert_id, props, token if type(token) is str else None, size


def _property_error(index: int, insert_id: str | None, key: str, problem: str) -> RecordError:
    return RecordError(index, insert_id, f"properties.{key}", f"properties.{key} is invalid: {problem}")


def _fallback_distinct_id(props: dict[str, Any], ctx: IngestContext) -> str | None:
    """Simplified ID Merge: `$user_id`, else `$device:<device_id>`; /track?ip=1: the address."""
    user_id = props.get("$user_id")
    if isinstance(user_id, str) and user_id:
        return user_id
    device_id = props.get("$device_id")
    if isinstance(device_id, str) and device_id:
        return f"$device:{device_id}"
    return ctx.fallback_distinct_id


def distinct_id_for_address(address: str) -> str:
    """A stable distinct_id for an anonymous client, as /track?ip=1 derives one."""
    return hashlib.sha256(address.encode()).hexdigest()[:32]


def has_invalid_utf8(text: str) -> bool:
    """Text decoded from invalid UTF-8 (or with lone surrogate escapes) cannot be stored."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _Invalid(Exception):
    """Raised from deep inside a property value; carries the reason."""


def _clean(value: Any, depth: int) -> Any:
    """Check a nested value against the limits and truncate its strings and keys.

    `depth` counts the containers (objects or lists) down to this one.
    """
    if isinstance(value, str):
        if not value.isascii() and has_invalid_utf8(value):
            raise _Invalid("string should be valid utf8")
        return value if len(value) <= limits.MAX_STRING_CHARS else value[: limits.MAX_STRING_CHARS]
    if isinstance(value, list):
        if depth > limits.MAX_NESTING_DEPTH:
            raise _Invalid(f"max nesting depth is {limits.MAX_NESTING_DEPTH}")
        if len(value) >= limits.MAX_ARRAY_ELEMENTS:
            raise _Invalid("arrays must have fewer than 255 elements")
        return [_clean(element, depth + 1) for element in value]
    if isinstance(value, dict):
        if depth > limits.MAX_NESTING_DEPTH:
            raise _Invalid(f"max nesting depth is {limits.MAX_NESTING_DEPTH}")
        if len(value) >= limits.MAX_OBJECT_KEYS:
            raise _Invalid("objects must have fewer than 255 keys")
        cleaned = {}
        for key, element in value.items():
            if not key.isascii() and has_invalid_utf8(key):
                raise _Invalid("string should be valid utf8")
            cleaned[key[: limits.MAX_STRING_CHARS]] = _clean(element, depth + 1)
        return cleaned
    if isinstance(value, OutOfRange):
        raise _Invalid(f"number {value.text} is out of range")
    return value
