"""Decode request payloads into lists of raw events (or profile updates).

Mixpanel's clients send the same data in many shapes (spec §2.1, §2.8, §3.1, §12): a JSON
array, NDJSON, a form field `data=` holding JSON or base64 (padded or not, with `+` turned
into spaces by clients that do not URL-escape), in the body or the query string. This module
turns any of them into a list of Python values. Pure functions over bytes and strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import msgspec
from msgspec import Meta

from eventkeep.errors import bad_request
from eventkeep.ingest import limits

Encoding = Literal["json", "ndjson", "form"]
EventShape = Literal["json", "ndjson"]  # the encodings of a body that is not a form

_decoder = msgspec.json.Decoder()

# The usual shape of an event, with Mixpanel's limits checked by the decoder itself: strings
# and names of at most 255 characters, fewer than 255 properties, keys and elements, and
# containers nested at most two deep. A batch that decodes this way needs no per-property
# checks in Python; any batch that does not is decoded again generically and checked in full.
_Text = Annotated[str, Meta(max_length=limits.MAX_STRING_CHARS)]
_Scalar = _Text | int | float | bool | None
_Inner = (
    _Scalar
    | Annotated[list[_Scalar], Meta(max_length=limits.MAX_ARRAY_ELEMENTS - 1)]
    | Annotated[dict[_Text, _Scalar], Meta(max_length=limits.MAX_OBJECT_KEYS - 1)]
)
_Value = (
    _Scalar
    | Annotated[list[_Inner], Meta(max_length=limits.MAX_ARRAY_ELEMENTS - 1)]
    | Annotated[dict[_Text, _Inner], Meta(max_length=limits.MAX_OBJECT_KEYS - 1)]
)


class CheckedEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An event whose properties are already known to be within every per-value limit."""

    event: Any
    properties: Annotated[dict[_Text, _Value], Meta(max_length=limits.MAX_PROPERTIES - 1)]


_checked_decoder = msgspec.json.Decoder(list[CheckedEvent])


def decode_checked_events(array: bytes) -> list[Any] | None:
    """A JSON array of events as CheckedEvents, or None if any item is not of that shape."""
    try:
        return _checked_decoder.decode(array)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


class OutOfRange:
    """Stands in for a JSON number no float can hold (1e400), so validation can name it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"OutOfRange({self.text})"


def _parse_float(text: str) -> float | OutOfRange:
    value = float(text)
    return value if math.isfinite(value) else OutOfRange(text)


def _reject_constant(text: str) -> OutOfRange:
    return OutOfRange(text)


def decode_json(raw: bytes) -> Any:
    """Decode JSON losslessly (big integers stay integers).

    The fast path is msgspec. Input it refuses for reasons that concern single values
    (invalid UTF-8, lone surrogates, numbers out of range) is decoded again by the standard
    library, keeping the bad values visible so validation can refuse just those events.
    """
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    text = raw.decode("utf-8", "surrogateescape")
    return json.loads(text, parse_float=_parse_float, parse_constant=_reject_constant)


@dataclass
class Payload:
    """A decoded request payload: the items, how they came, and per-line parse failures."""

    items: list[Any]
    encoding: Encoding
    params: dict[str, str] = field(default_factory=dict)
    line_errors: dict[int, str] = field(default_factory=dict)


def parse_form(body: bytes) -> dict[str, str]:
    text = body.decode("utf-8", "surrogateescape")
    return dict(parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"))


def looks_like_form(body: bytes, content_type: str) -> bool:
    if "application/x-www-form-urlencoded" in content_type:
        return True
    if "json" in content_type:
        return False
    head = body[:64].lstrip()
    return not head.startswith((b"[", b"{")) and b"=" in head


def decode_data_param(value: str) -> Any:
    """Decode a `data` field: raw JSON, or base64 of JSON (spaces read as `+`)."""
    stripped = value.strip()
    if stripped.startswith(("{", "[")):
        try:
            return decode_json(stripped.encode("utf-8", "surrogateescape"))
        except ValueError as exc:
            raise bad_request(f"'data' is not valid JSON: {_short(exc)}") from None
    compact = "".join(stripped.replace(" ", "+").split())
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("'data' is neither JSON nor base64-encoded JSON") from None
    try:
        return decode_json(raw)
    except ValueError:
        raise bad_request("'data' does not decode to valid JSON") from None


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [value]


def parse_ndjson(body: bytes, *, events: bool = False) -> tuple[list[Any], dict[int, str]]:
    """Parse NDJSON, keeping every line that parses and noting the ones that do not.

    `events`: try the checked event shape first (see CheckedEvent).
    """
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        return [], {}
    joined = b"[" + b",".join(lines) + b"]"
    if events:
        checked = decode_checked_events(joined)
        if checked is not None and len(checked) == len(lines):
            return checked, {}
    try:  # one decoder call for the whole batch is far cheaper than one per line
        items = _decoder.decode(joined)
        if len(items) == len(lines):
            return items, {}
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    items = []
    errors: dict[int, str] = {}
    for index, line in enumerate(lines):
        try:
            items.append(decode_json(line))
        except ValueError as exc:
            items.append(None)
            errors[index] = f"line {index + 1} is not valid JSON: {_short(exc)}"
    return items, errors


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def parse_body(
    body: bytes, content_type: str, query: dict[str, str], *, events: bool = False
) -> Payload:
    """Turn a request (already decompressed) into a Payload.

    `query` holds the query-string parameters; a legacy GET carries `data` there. `events`:
    the items are meant to be events, so JSON arrays and NDJSON try the checked event shape
    first (see CheckedEvent).
    """
    params = dict(query)
    shape = body_shape(body, content_type)
    if shape is None:
        if not body or body.isspace():
            if "data" in params:
                return Payload(_as_list(decode_data_param(params["data"])), "form", params)
            raise bad_request("request body is empty")
        params.update(parse_form(body))
        if "data" not in params:
            raise bad_request("form body has no 'data' field")
        return Payload(_as_list(decode_data_param(params["data"])), "form", params)
    if shape == "ndjson":
        items, errors = parse_ndjson(body, events=events)
        if errors and len(errors) == len(items):
            # Perhaps a single pretty-printed object rather than NDJSON.
            try:
                return Payload(_as_list(decode_json(body)), "json", params)
            except ValueError:
                pass
        return Payload(items, "ndjson", params, errors)
    return _json_array(body, params, events)


def body_shape(body: bytes, content_type: str) -> EventShape | None:
    """How a body is read: as a JSON array (or one object), as NDJSON, or None for an
    empty body or a form."""
    if not body or body.isspace():
        return None
    content_type = content_type.lower()
    if looks_like_form(body, content_type):
        return None
    head = body.lstrip()[:1]
    if head != b"[" and ("ndjson" in content_type or head == b"{"):
        return "ndjson"
    return "json"


def _json_array(body: bytes, params: dict[str, str], events: bool) -> Payload:
    if events and body.lstrip()[:1] == b"[":
        checked = decode_checked_events(body)
        if checked is not None:
            return Payload(checked, "json", params)
    try:
        value = decode_json(body)
    except ValueError as exc:
        raise bad_request(f"unable to parse request body as JSON: {_short(exc)}") from None
    if isinstance(value, dict):
        return Payload([value], "json", params)
    if not isinstance(value, list):
        raise bad_request("request body must be a JSON array of events")
    return Payload(value, "json", params)


