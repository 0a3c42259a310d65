"""Validate and apply user and group profile updates, as /engage and /groups do (spec §4).

Pure functions over plain data. `validate_updates` turns decoded update objects into
`ProfileUpdate`s and per-record `RecordError`s worded in Mixpanel's "<field>, <problem>"
style (the observed message is "$distinct_id, missing or empty"). `apply_update` computes a
profile's next state from its current one; the store runs it inside its single writer, so
read-modify-write never races and the rules live in one testable place.

Decisions where Mixpanel's documentation is silent (spec §4.3, [UNC]):
- Groups accept `$add` (the group batch-update contract lists it) but refuse `$append`
  (documented as "not supported in group profiles", and no official SDK sends it).
- An operation whose target property has the wrong type is skipped for that property: `$add`
  to a non-number, `$union`/`$append`/`$remove` on a non-list (the Android and Flutter SDK
  docs say such updates "will be ignored"). A `null` property counts as absent.
- `$remove` removes every occurrence of the value; `$union` keeps existing duplicates and
  adds each new value once. `true` never equals `1`.
- `$unset`/`$remove` on a profile that does not exist create nothing; every other operation
  creates the profile (an empty `$set` included).
- `$last_seen` ("YYYY-MM-DDTHH:MM:SS", UTC) is set from `$time` (seconds, or milliseconds
  above 1e10 as for events), or the arrival time without `$time`, unless `$ignore_time` is
  true; it is set before the operation, so an explicit `$set` of `$last_seen` wins. Group
  profiles get it too.
- `$ip`, `$latitude`, `$longitude`, `$ignore_alias` are accepted and ignored: there is no
  geolocation or aliasing yet. Other top-level keys (the JS SDK's `$device_id`, `$user_id`)
  are ignored.
- `$distinct_id` refuses the placeholder values events refuse (spec §2.3); numbers are
  accepted as their JSON text, as for events. `$group_id` accepts strings and numbers.
- Empty `$union` lists and an empty `$unset` list are refused (the OpenAPI's `minItems: 1`);
  `$union` elements must be strings or numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

from eventkeep.errors import RecordError
from eventkeep.ingest import limits
from eventkeep.ingest.payload import OutOfRange
from eventkeep.ingest.validate import has_invalid_utf8

Endpoint = Literal["engage", "groups"]

MAX_UPDATES_PER_REQUEST: Final = 2000  # "limits ... to 2000 as well as ... 1 MB" (§4.4)
MAX_UPDATE_BYTES: Final = 1024 * 1024
MAX_PROFILE_PROPERTIES: Final = 2000  # "Each User Profile can contain up to 2000 properties"
MAX_LIST_PROPERTY_BYTES: Final = 256 * 1024  # "List or object profile properties ... 256 KB"

USER_KIND: Final = "user"

USER_OPERATIONS: Final[tuple[str, ...]] = (
    "$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete"
)
GROUP_OPERATIONS: Final[tuple[str, ...]] = ("$set", "$set_once", "$add", "$union", "$remove", "$unset", "$delete")
_ALL_OPERATIONS: Final = frozenset(USER_OPERATIONS)

# Messages, in Mixpanel's "<field>, <problem>" wording.
NOT_OBJECT = "update, must be a JSON object"
DISTINCT_ID_MISSING = "$distinct_id, missing or empty"
DISTINCT_ID_TYPE = "$distinct_id, must be a string or a number"
DISTINCT_ID_PLACEHOLDER = "$distinct_id, {value!r} is a placeholder, not a user id"
GROUP_KEY_MISSING = "$group_key, missing or empty"
GROUP_KEY_TYPE = "$group_key, must be a string"
GROUP_ID_MISSING = "$group_id, missing or empty"
GROUP_ID_TYPE = "$group_id, must be a string or a number"
TOKEN_MISSING = "$token, missing or empty"
TOKEN_UNKNOWN = "$token, not a known project token"
NO_OPERATION = "update, no operation: expected one of {names}"
TWO_OPERATIONS = "update, more than one operation ({names}): send one update per operation"
NOT_FOR_GROUPS = "{op}, not supported in group profiles"
MUST_BE_OBJECT = "{op}, must be an object of property names to values"
ADD_NOT_NUMBER = "$add, {key!r} must be a number"
UNION_NOT_LIST = "$union, {key!r} must be a non-empty list of strings or numbers"
UNSET_NOT_LIST = "$unset, must be a non-empty list of property names"
TIME_INVALID = "$time, must be a number of seconds since epoch"
VALUE_INVALID = "{op}, {key!r} is invalid: {problem}"
NAME_INVALID = "{op}, property names should be valid utf8"
UPDATE_TOO_LARGE = "update, must be smaller than 1MB of uncompressed JSON"
TOO_MANY_PROPERTIES = "profile, must have at most 2000 properties"
LIST_TOO_LARGE = "{op}, {key!r} is too large: list and object properties must be at most 256KB"


def group_kind(group_key: str) -> str:
    """The stored kind of a group profile; prefixed so a group key "user" is not a user."""
    return f"group:{group_key}"


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """One valid update. `kind` is USER_KIND or group_kind(key); `index` is request order."""

    index: int
    token: str | None
    kind: str
    profile_id: str
    operation: str
    value: Any
    last_seen_ms: int | None  # None: `$ignore_time`, leave `$last_seen` alone


@dataclass(slots=True)
class ValidUpdates:
    updates: list[ProfileUpdate] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)


def validate_updates(
    items: list[Any],
    endpoint: Endpoint,
    now_ms: int,
    parse_errors: dict[int, str] | None = None,
) -> ValidUpdates:
    """Validate a decoded /engage or /groups batch. Never raises for a bad update."""
    result = ValidUpdates()
    for index, item in enumerate(items):
        if parse_errors and index in parse_errors:
            result.errors.append(RecordError(index, None, "update", parse_errors[index]))
            continue
        outcome = _validate_one(item, index, endpoint, now_ms)
        if isinstance(outcome, RecordError):
            result.errors.append(outcome)
        else:
            result.updates.append(outcome)
    return result


def _fail(index: int, field_name: str, message: str) -> RecordError:
    return RecordError(index, None, field_name, message)


def _id_text(value: Any) -> str | None:
    """Ids may be strings or numbers (SDKs pass ints); numbers keep their JSON text."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return msgspec.json.encode(value).decode()
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validate_one(item: Any, index: int, endpoint: Endpoint, now_ms: int) -> RecordError | ProfileUpdate:
    if not isinstance(item, dict):
        return _fail(index, "update", NOT_OBJECT)
    token = item.get("$token")
    token = token if isinstance(token, str) and token else None

    if endpoint == "engage":
        raw_id = item.get("$distinct_id")
        if raw_id is None or raw_id == "":
            return _fail(index, "$distinct_id", DISTINCT_ID_MISSING)
        profile_id = _id_text(raw_id)
        if profile_id is None:
            return _fail(index, "$distinct_id", DISTINCT_ID_TYPE)
        if not profile_id.strip():
            return _fail(index, "$distinct_id", DISTINCT_ID_MISSING)
        if profile_id.strip().lower() in limits.DISALLOWED_IDS:
            return _fail(index, "$distinct_id", DISTINCT_ID_PLACEHOLDER.format(value=profile_id))
        if has_invalid_utf8(profile_id):
            return _fail(index, "$distinct_id", "$distinct_id, string should be valid utf8")
        kind = USER_KIND
        allowed = USER_OPERATIONS
    else:
        group_key = item.get("$group_key")
        if group_key is None or group_key == "":
            return _fail(index, "$group_key", GROUP_KEY_MISSING)
        if not isinstance(group_key, str):
            return _fail(index, "$group_key", GROUP_KEY_TYPE)
        raw_group_id = item.get("$group_id")
        if raw_group_id is None or raw_group_id == "":
            return _fail(index, "$group_id", GROUP_ID_MISSING)
        group_id = _id_text(raw_group_id)
        if group_id is None:
            return _fail(index, "$group_id", GROUP_ID_TYPE)
        if has_invalid_utf8(group_key) or has_invalid_utf8(group_id):
            return _fail(index, "$group_id", "$group_id, string should be valid utf8")
        kind = group_kind(group_key[: limits.MAX_STRING_CHARS])
        profile_id = group_id
        allowed = GROUP_OPERATIONS
    profile_id = profile_id[: limits.MAX_STRING_CHARS]

    present = [key for key in item if key in _ALL_OPERATIONS]
    if not present:
        return _fail(index, "update", NO_OPERATION.format(names=", ".join(allowed)))
    if len(present) > 1:
        return _fail(index, "update", TWO_OPERATIONS.format(names=", ".join(present)))
    operation = present[0]
    if operation not in allowed:
        return _fail(index, operation, NOT_FOR_GROUPS.format(op=operation))

    last_seen_ms: int | None = None
    if not _is_true(item.get("$ignore_time")):
        raw_time = item.get("$time")
        if raw_time is None:
            last_seen_ms = now_ms
        elif not _is_number(raw_time):
            return _fail(index, "$time", TIME_INVALID)
        elif abs(raw_time) > limits.MS_THRESHOLD:
            last_seen_ms = round(raw_time)
        else:
            last_seen_ms = round(raw_time * 1000)

    value = _validate_value(operation, item[operation])
    if isinstance(value, str):
        return _fail(index, operation, value)

    if _size(item) >= MAX_UPDATE_BYTES:
        return _fail(index, "update", UPDATE_TOO_LARGE)
    return ProfileUpdate(index, token, kind, profile_id, operation, value.value, last_seen_ms)


@dataclass(frozen=True, slots=True)
class _Value:
    value: Any


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1"))


def _validate_value(operation: str, raw: Any) -> _Value | str:
    """The operation's value, normalised (strings truncated), or the message refusing it."""
    if operation == "$delete":
        return _Value(None)  # "The $delete object value is ignored"
    if operation == "$unset":
        if not isinstance(raw, list) or not raw or not all(isinstance(n, str) for n in raw):
            return UNSET_NOT_LIST
        if any(has_invalid_utf8(n) for n in raw):
            return NAME_INVALID.format(op=operation)
        return _Value([n[: limits.MAX_STRING_CHARS] for n in raw])
    if not isinstance(raw, dict):
        return MUST_BE_OBJECT.format(op=operation)
    normalised: dict[str, Any] = {}
    for key, value in raw.items():
        if has_invalid_utf8(key):
            return NAME_INVALID.format(op=operation)
        if operation == "$add":
            if not _is_number(value):
                return ADD_NOT_NUMBER.format(key=key)
        elif operation == "$union" and not _is_union_list(value):
            return UNION_NOT_LIST.format(key=key)
        problem = _value_problem(value)
        if problem is not None:
            return VALUE_INVALID.format(op=operation, key=key, problem=problem)
        normalised[key[: limits.MAX_STRING_CHARS]] = _truncate(value)
    return _Value(normalised)


def _is_union_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, str) or _is_number(v) for v in value)
    )


def _value_problem(value: Any) -> str | None:
    """What makes a value unstorable: text that is not UTF-8, a number no float holds."""
    if isinstance(value, str):
        return "string should be valid utf8" if has_invalid_utf8(value) else None
    if isinstance(value, OutOfRange):
        return f"number {value.text} is out of range"
    if isinstance(value, list):
        for element in value:
            problem = _value_problem(element)
            if problem is not None:
                return problem
    elif isinstance(value, dict):
        for key, element in value.items():
            if has_invalid_utf8(key):
                return "string should be valid utf8"
            problem = _value_problem(element)
            if problem is not None:
                return problem
    return None


def _truncate(value: Any) -> Any:
    """Cut strings and object keys to 255 characters, as event validation does (§2.2)."""
    cut = limits.MAX_STRING_CHARS
    if isinstance(value, str):
        return value if len(value) <= cut else value[:cut]
    if isinstance(value, list):
        return [_truncate(v) for v in value]
    if isinstance(value, dict):
        return {(k if len(k) <= cut else k[:cut]): _truncate(v) for k, v in value.items()}
    return value


def _size(value: Any) -> int:
    try:
        return len(msgspec.json.encode(value))
    except (TypeError, OverflowError, UnicodeEncodeError, msgspec.EncodeError):
        import json

        return len(json.dumps(value, ensure_ascii=False, default=repr).encode("utf-8", "replace"))


# -- applying ------------------------------------------------------------------------------


def last_seen_text(ms: int) -> str:
    """`$last_seen` as Mixpanel's engage API shows it: UTC, to the second, no zone suffix."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _same(a: Any, b: Any) -> bool:
    """JSON equality for list membership: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        return False
    return bool(a == b)


def apply_update(current: dict[str, Any] | None, update: ProfileUpdate) -> dict[str, Any] | None:
    """The profile after `update`; None means it does not exist. Never mutates `current`."""
    operation = update.operation
    if operation == "$delete":
        return None
    if current is None and operation in ("$unset", "$remove"):
        return None  # "If it does not exist, no updates are made."
    profile = dict(current) if current is not None else {}
    if update.last_seen_ms is not None:
        profile["$last_seen"] = last_seen_text(update.last_seen_ms)
    value = update.value
    if operation == "$set":
        profile.update(value)
    elif operation == "$set_once":
        for key, new in value.items():
            if key not in profile:
                profile[key] = new
    elif operation == "$add":
        for key, amount in value.items():
            old = profile.get(key)
            if old is None:
                profile[key] = amount
            elif _is_number(old):
                profile[key] = old + amount
    elif operation == "$union":
        for key, values in value.items():
            old = profile.get(key)
            if old is not None and not isinstance(old, list):
                continue
            merged = list(old) if old is not None else []
            for new in values:
                if not any(_same(new, existing) for existing in merged):
                    merged.append(new)
            profile[key] = merged
    elif operation == "$append":
        for key, new in value.items():
            old = profile.get(key)
            if old is None:
                profile[key] = [new]
            elif isinstance(old, list):
                profile[key] = [*old, new]
    elif operation == "$remove":
        for key, gone in value.items():
            old = profile.get(key)
            if isinstance(old, list):
                profile[key] = [x for x in old if not _same(x, gone)]
    elif operation == "$unset":
        for key in value:
            profile.pop(key, None)
    else:  # pragma: no cover - validation admits only the operations above
        raise ValueError(f"unknown profile operation {operation!r}")
    return profile


def profile_problem(profile: dict[str, Any] | None, update: ProfileUpdate) -> str | None:
    """Whether the result of `update` breaks a profile limit (§4.4); only what it touched."""
    if profile is None or update.operation in ("$delete", "$unset", "$remove"):
        return None
    if len(profile) > MAX_PROFILE_PROPERTIES:
        return TOO_MANY_PROPERTIES
    for key in update.value:
        stored = profile.get(key)
        if isinstance(stored, list | dict) and _size(stored) > MAX_LIST_PROPERTY_BYTES:
            return LIST_TOO_LARGE.format(op=update.operation, key=key)
    return None


def apply_checked(
    current: dict[str, Any] | None, update: ProfileUpdate
) -> tuple[dict[str, Any] | None, RecordError | None]:
    """Apply `update` unless its result breaks a limit; then keep `current` and say why."""
    result = apply_update(current, update)
    problem = profile_problem(result, update)
    if problem is not None:
        return current, RecordError(update.index, None, "profile", problem)
    return result, None
