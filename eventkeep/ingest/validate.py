"""Validate and normalise events the way Mixpanel's ingestion does (spec §2.3, §2.6, §3.4).

Pure functions over plain data: a list of decoded events in, a columnar batch of storable
events and a list of per-record errors out. The same code validates on the server and in the
command-line import tool, so both refuse exactly the same events with the same words.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Literal

import msgspec

from eventkeep.errors import RecordError
from eventkeep.ingest import limits
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.payload import CheckedEvent, OutOfRange

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


def validate_events(
    items: list[Any],
    ctx: IngestContext,
    parse_errors: dict[int, str] | None = None,
    *,
    decisions_only: bool = False,
    size_bound: int | None = None,
) -> ValidBatch:
    """Validate a decoded batch. Never raises for bad events: they become RecordErrors.

    `decisions_only`: the caller needs to know which events are accepted (`indexes`) and
    why others are refused, not what would be stored (the import tool sends the events'
    own text); a batch of clean events then skips building its rows. `size_bound`: no item
    is larger than this as compact JSON (see `compact_size_bound`), so a batch of clean
    events whose bound is under the size limit is not encoded just to be measured.
    """
    track = ctx.endpoint == "track"
    added = ingestion_properties(ctx)
    if not parse_errors and items and type(items[0]) is CheckedEvent:
        accepted = _accept_checked_batch(items, ctx, added, decisions_only, size_bound)
        if accepted is not None:
            return accepted
    events: list[str] = []
    distinct_ids: list[str] = []
    times_ms: list[int] = []
    insert_ids: list[str] = []
    properties: list[bytes] = []
    tokens: list[str | None] = []
    indexes: list[int] = []
    errors: list[RecordError] = []
    ignored = 0
    for index, item in enumerate(items):
        if parse_errors and index in parse_errors:
            errors.append(RecordError(index, None, "event", parse_errors[index]))
            continue
        outcome: RecordError | _Accepted | None = None
        if type(item) is CheckedEvent:
            outcome = _accept_checked(item, ctx, track)
            if outcome is None:
                item = {"event": item.event, "properties": item.properties}
        if outcome is None:
            outcome = _validate_one(item, index, ctx, track)
        if isinstance(outcome, RecordError):
            errors.append(outcome)
        elif outcome is _IGNORED:
            ignored += 1
        elif outcome is not None:
            name, distinct_id, time_ms, insert_id, props, token, size = outcome
            props.update(added)
            props["$mp_event_size"] = size
            events.append(name)
            distinct_ids.append(distinct_id)
            times_ms.append(time_ms)
            insert_ids.append(insert_id)
            properties.append(_encode_properties(props))
            tokens.append(token)
            indexes.append(index)
    return ValidBatch.from_columns(
        events=events,
        distinct_ids=distinct_ids,
        times_ms=times_ms,
        insert_ids=insert_ids,
        properties=properties,
        tokens=tokens,
        indexes=indexes,
        errors=errors,
        ignored=ignored,
    )


def ingestion_properties(ctx: IngestContext) -> dict[str, Any]:
    """The properties the server adds to every event it stores, in their order."""
    added: dict[str, Any] = {} if ctx.endpoint == "track" else {"$import": True}
    added["$mp_api_endpoint"] = ctx.api_host
    added["$mp_api_timestamp_ms"] = ctx.now_ms
    added["mp_processing_time_ms"] = ctx.now_ms
    return added


_INSERT_IDS_RE = re.compile(r"[A-Za-z0-9-]+(?:\n[A-Za-z0-9-]+)*")


def compact_size_bound(texts: list[bytes]) -> int:
    """An upper bound on the compact JSON size of events decoded from these texts.

    Re-encoding never lengthens a string, a key, an integer or a literal (escapes may only
    shorten, whitespace goes), but a float can grow: `1e5` (3 bytes) encodes as `100000.0`,
    and no float encodes to more than 24 bytes, so no value grows more than eightfold.
    """
    return 8 * max(map(len, texts), default=0)


def _accept_checked_batch(
    items: list[CheckedEvent],
    ctx: IngestContext,
    added: dict[str, Any],
    decisions_only: bool = False,
    size_bound: int | None = None,
) -> ValidBatch | None:
    """The whole batch at once, when every event is of the usual, valid kind; else None.

    A well-formed batch from an SDK or an import tool is the common case and the hot path.
    Each rule is checked over a whole column with built-ins that loop in C (set, map, min,
    max, one regular expression over all the insert ids) instead of statement by statement
    per event. Nothing is changed until every rule has passed; if any event needs more than
    this, the batch goes event by event (`_accept_checked`, then `_validate_one`), which
    defines the rules.
    """
    names = [item.event for item in items]
    for name in set(names):  # few distinct names
        if type(name) is not str or not name or len(name) > limits.MAX_STRING_CHARS or name.isspace():
            return None
    all_props: list[dict[str, Any]] = [item.properties for item in items]
    if any(["$ignore" in props for props in all_props]):
        return None

    times: list[Any] = [props.get("time") for props in all_props]
    if not {int, float}.issuperset(map(type, times)):
        return None
    low, high = min(times), max(times)
    if low > 0 and high <= limits.MS_THRESHOLD:
        scale = 1000  # seconds
    elif low > limits.MS_THRESHOLD:
        scale = 1  # milliseconds
    else:
        return None
    oldest = ctx.now_ms - limits.TRACK_MAX_AGE_MS if ctx.endpoint == "track" else limits.MIN_TIME_MS
    # Scaling and rounding keep the order, so the extremes bound every event's time.
    if round(low * scale) < max(oldest, limits.MIN_TIME_MS) or round(high * scale) > ctx.now_ms:
        return None

    distinct_ids: list[Any] = [props.get("distinct_id") for props in all_props]
    if {str} != set(map(type, distinct_ids)):
        return None
    if max(map(len, distinct_ids)) > limits.MAX_STRING_CHARS:
        return None
    if not limits.DISALLOWED_IDS.isdisjoint(map(str.lower, map(str.strip, distinct_ids))):
        return None

    insert_ids: list[Any] = [props.get("$insert_id") for props in all_props]
    given: list[Any] = [insert_id for insert_id in insert_ids if insert_id is not None]
    if given:
        if {str} != set(map(type, given)):
            return None
        if max(map(len, given)) > limits.MAX_INSERT_ID_BYTES:
            return None
        if not _INSERT_IDS_RE.fullmatch("\n".join(given)):
            return None
        if not limits.DISALLOWED_IDS.isdisjoint(map(str.lower, given)):
            return None
    if decisions_only:
        if size_bound is not None and size_bound < limits.MAX_EVENT_BYTES:
            return ValidBatch(indexes=list(range(len(items))))
        if max(map(len, map(_encode, items))) >= limits.MAX_EVENT_BYTES:
            return None
        return ValidBatch(indexes=list(range(len(items))))
    times_ms = [round(t * scale) for t in times]
    return _store_checked_batch(names, all_props, times, times_ms, distinct_ids, insert_ids, added)


_MISSING: Any = object()


def _store_checked_batch(
    names: list[str],
    all_props: list[dict[str, Any]],
    times: list[Any],
    times_ms: list[int],
    distinct_ids: list[str],
    insert_ids: list[Any],
    added: dict[str, Any],
) -> ValidBatch | None:
    """Edit and encode the properties of a batch that passed every rule but the size one.

    Each event is encoded once. `$mp_event_size`, the length of the event as compact JSON,
    follows from the length of its encoded properties and of the pairs taken out (`time`,
    `distinct_id`, `token`) or put in (a generated `$insert_id`): in a JSON object every
    pair adds its own length plus one byte (a comma or the closing brace). The ingestion
    properties are appended to the encoded bytes rather than to each dict, unless an event
    has one of them already (the server's value replaces its own). An event over the size
    limit (rare: over 1 MB) puts everything back as it was and returns None.
    """
    tokens = [props.pop("token", _MISSING) for props in all_props]
    for props in all_props:
        del props["time"]
        del props["distinct_id"]
    generated = [row for row, insert_id in enumerate(insert_ids) if insert_id is None]
    was_null = [all_props[row].get("$insert_id", _MISSING) is None for row in generated]
    if generated:
        insert_ids = list(insert_ids)
        for row in generated:
            all_props[row]["$insert_id"] = insert_ids[row] = _new_insert_id()
    encoded = list(map(_encode, all_props))

    name_bytes = {name: len(_encode(name)) for name in set(names)}
    # {"event":NAME,"properties":{...}} is 24 bytes around the name and the properties;
    # "time":T, is 8 bytes around T and "distinct_id":D, 15 around D.
    sizes = [
        24 + name_bytes[name] + len(core) + 8 + time_bytes + 15 + id_bytes
        for name, core, time_bytes, id_bytes in zip(
            names, encoded, map(len, map(_encode, times)), map(len, map(_encode, distinct_ids)), strict=True
        )
    ]
    for row, token in enumerate(tokens):
        if token is not _MISSING:
            sizes[row] += 9 + len(_encode(token))  # "token":T,
    for row, null in zip(generated, was_null, strict=True):
        # "$insert_id":ID, is 14 bytes around ID; the event had no such pair, or had null.
        sizes[row] -= 14 + len(_encode(insert_ids[row])) - (18 if null else 0)

    if max(sizes) >= limits.MAX_EVENT_BYTES:
        for props, raw_time, distinct_id, token in zip(all_props, times, distinct_ids, tokens, strict=True):
            props["time"] = raw_time
            props["distinct_id"] = distinct_id
            if token is not _MISSING:
                props["token"] = token
        for row, null in zip(generated, was_null, strict=True):
            if null:
                all_props[row]["$insert_id"] = None
            else:
                del all_props[row]["$insert_id"]
        return None

    if any(any(map(dict.__contains__, all_props, repeat(key))) for key in (*added, "$mp_event_size")):
        for props, size in zip(all_props, sizes, strict=True):
            props.update(added)
            props["$mp_event_size"] = size
        properties = list(map(_encode, all_props))
    else:
        tail = b"," + _encode(added)[1:-1] + b',"$mp_event_size":'
        properties = [b"%s%s%d}" % (core[:-1], tail, size) for core, size in zip(encoded, sizes, strict=True)]
    return ValidBatch.from_columns(
        events=names,
        distinct_ids=distinct_ids,
        times_ms=times_ms,
        insert_ids=insert_ids,
        properties=properties,
        tokens=[token if type(token) is str else None for token in tokens],
    )


_Accepted = tuple[str, str, int, str, dict[str, Any], str | None, int]
_IGNORED: Any = object()  # the outcome of an event with a true $ignore


def _accept_checked(item: CheckedEvent, ctx: IngestContext, track: bool) -> _Accepted | None:
    """The fast path for an event of the usual shape, or None to check it in full.

    The decoder has already held every property to the limits (see CheckedEvent), so this
    only looks at the fields with rules of their own, and only accepts: anything unusual
    returns None and goes through _validate_one, which is the definition of the rules. The
    decoded properties belong to this request, so they are edited in place.
    """
    name = item.event
    props: dict[str, Any] = item.properties
    if type(name) is not str or len(name) > limits.MAX_STRING_CHARS or not name or name.isspace():
        return None
    if "$ignore" in props:
        return None
    raw_time: Any = props.get("time")
    kind = type(raw_time)
    if kind is int or kind is float:
        time_ms = round(raw_time) if abs(raw_time) > limits.MS_THRESHOLD else round(raw_time * 1000)
        if not limits.MIN_TIME_MS <= time_ms <= ctx.now_ms:
            return None
        if track and time_ms < ctx.now_ms - limits.TRACK_MAX_AGE_MS:
            return None
    else:
        return None
    distinct_id: Any = props.get("distinct_id")
    if (
        type(distinct_id) is not str
        or len(distinct_id) > limits.MAX_STRING_CHARS
        or (len(distinct_id) <= 64 and distinct_id.strip().lower() in limits.DISALLOWED_IDS)
    ):
        return None
    insert_id: Any = props.get("$insert_id")
    if insert_id is None:
        insert_id = _new_insert_id()
    elif (
        type(insert_id) is not str
        or len(insert_id) > limits.MAX_INSERT_ID_BYTES
        or not _INSERT_ID_RE.fullmatch(insert_id)
        or insert_id.lower() in limits.DISALLOWED_IDS
    ):
        return None
    size = len(_encode(item))
    if size >= limits.MAX_EVENT_BYTES:
        return None
    token = props.pop("token", None)
    props.pop("time")
    props.pop("distinct_id")
    props["$insert_id"] = insert_id
    return name, distinct_id, time_ms, insert_id, props, token if type(token) is str else None, size


def _new_insert_id() -> str:
    return uuid.uuid4().hex


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
) -> RecordError | _Accepted:
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
        return _IGNORED

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
        insert_id = _new_insert_id()
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
