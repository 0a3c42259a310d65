"""Turn input records into Mixpanel events: decoding, flat rows, time parsing, `$insert_id`.

Two record shapes are accepted. A Mixpanel-shaped record (`{"event", "properties": {…}}`)
is sent as it is, byte for byte when it already has an `$insert_id`. A flat record (a CSV
or Parquet row, or a JSON object without a `properties` object) names its event, user, time
and insert id in columns chosen by options; every other column becomes a property.

An event without an `$insert_id` gets a deterministic one: a hash of the whole event
(name, distinct_id, time and every property, keys sorted). A re-run of the same input
therefore produces the same ids, and the server's deduplication absorbs anything sent
twice. The price, stated plainly: two input records identical in every field collapse
into one event, as they would in Mixpanel with any content-derived id.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import orjson

from eventkeep.client.sources import Chunk
from eventkeep.ingest.limits import MS_THRESHOLD
from eventkeep.ingest.payload import decode_checked_events, decode_json

Shape = Literal["auto", "mixpanel", "flat"]
TimeUnit = Literal["auto", "s", "ms"]

_decoder = msgspec.json.Decoder()
_PLAIN = (str, int, float, bool)
_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


@dataclass(frozen=True)
class ShapeOptions:
    """How records become events. Everything here changes the events sent, so the
    checkpoint remembers it (`fingerprint`)."""

    shape: Shape = "auto"
    event_column: str = "event"
    distinct_id_column: str = "distinct_id"
    time_column: str = "time"
    insert_id_column: str = "$insert_id"
    time_unit: TimeUnit = "auto"
    time_zone: str = "UTC"
    infer_types: bool = False

    def zone(self) -> dt.tzinfo:
        if self.time_zone.upper() in ("UTC", "Z"):
            return dt.UTC
        try:
            return ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.time_zone!r} (use an IANA name such as Europe/Paris)") from None

    def fingerprint(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Shaped:
    """A chunk's records as events, ready for validation.

    `lines[i]` is the exact JSON text to send for item i when the input's own bytes can be
    sent unchanged, else None (encode the item after validation, only if it is valid).
    """

    items: list[Any]
    lines: list[bytes | None]
    parse_errors: dict[int, str]


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def encode_event(event: Any) -> bytes:
    """One event as compact JSON; big integers and odd types fall back to the stdlib."""
    try:
        return orjson.dumps(event, default=_json_default)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode(
            "utf-8", "surrogatepass"
        )


def insert_id_for(event: Any) -> str:
    """A deterministic `$insert_id`: 32 hex characters of BLAKE2b over the sorted event."""
    try:
        blob = orjson.dumps(event, option=orjson.OPT_SORT_KEYS, default=_json_default)
    except (TypeError, orjson.JSONEncodeError):
        blob = json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default).encode(
            "utf-8", "surrogatepass"
        )
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def _decode_raws(chunk: Chunk) -> tuple[list[Any], dict[int, str]]:
    raws = chunk.raws or []
    errors: dict[int, str] = {}
    if not chunk.errors:
        # One decoder call for the chunk is several times cheaper than one per record.
        try:
            items = _decoder.decode(b"[" + b",".join(raws) + b"]")
            if isinstance(items, list) and len(items) == len(raws):
                return items, errors
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
    items = []
    for i, raw in enumerate(raws):
        if i in chunk.errors:
            items.append(None)
            errors[i] = chunk.errors[i]
            continue
        try:
            items.append(decode_json(raw))
        except ValueError as exc:
            items.append(None)
            text = str(exc)
            text = text if len(text) <= 120 else text[:117] + "..."
            errors[i] = f"{chunk.kind} {chunk.indexes[i] + 1} is not valid JSON: {text}"
    return items, errors


class Shaper:
    """Applies ShapeOptions to chunks. One per run: it caches the time zone."""

    def __init__(self, options: ShapeOptions) -> None:
        self.options = options
        self._zone = options.zone()
        self._columns = {
            options.event_column,
            options.distinct_id_column,
            options.time_column,
            options.insert_id_column,
        }

    def shape(self, chunk: Chunk) -> Shaped:
        checked = self._checked_events(chunk)
        if checked is not None:
            return Shaped(checked, list(chunk.raws or []), {})
        if chunk.raws is not None:
            items, parse_errors = _decode_raws(chunk)
            lines: list[bytes | None] = list(chunk.raws)
        else:
            items = list(chunk.rows or [])
            parse_errors = dict(chunk.errors)
            lines = [None] * len(items)
        mode = self.options.shape
        for i, item in enumerate(items):
            if i in parse_errors or not isinstance(item, dict):
                continue
            props = item.get("properties")
            if mode == "mixpanel" or (mode == "auto" and not chunk.flat and isinstance(props, dict)):
                if isinstance(props, dict) and props.get("$insert_id") is None:
                    # copies, not edits: in-memory events belong to the caller
                    items[i] = {**item, "properties": {**props, "$insert_id": insert_id_for(item)}}
                    lines[i] = None
                continue
            items[i] = self.flat_to_event(item, drop_nulls=chunk.flat)
            lines[i] = None
        return Shaped(items, lines, parse_errors)

    def sends_as_read(self, chunk: Chunk) -> bool:
        """Whether the chunk's records are events to send as read, if they are valid:
        Mixpanel-shaped JSON texts, none unreadable."""
        return not (not chunk.has_texts or chunk.errors or chunk.flat or self.options.shape not in ("auto", "mixpanel"))

    def _checked_events(self, chunk: Chunk) -> list[Any] | None:
        """The usual case, fast: NDJSON of Mixpanel-shaped events that carry their own
        `$insert_id` decode straight to the checked event shape, which validation accepts a
        whole chunk at a time (see eventkeep.ingest.payload.CheckedEvent). The lines are sent
        as they were read, so validation may edit these decoded copies."""
        raws = chunk.raws
        if raws is None or not self.sends_as_read(chunk):
            return None
        events = decode_checked_events(b"[" + b",".join(raws) + b"]")
        if events is None or len(events) != len(raws):
            return None
        if any([event.properties.get("$insert_id") is None for event in events]):
            return None
        return events

    def flat_to_event(self, row: dict[str, Any], *, drop_nulls: bool = False) -> dict[str, Any]:
        """A flat row as an event: chosen columns for the event fields, the rest properties."""
        o = self.options
        props: dict[str, Any] = {}
        nested = row.get("properties")
        if isinstance(nested, str) and nested.lstrip().startswith("{"):
            with contextlib.suppress(ValueError):
                nested = decode_json(nested.encode("utf-8", "surrogateescape"))
        if isinstance(nested, dict):
            props.update(nested)
        infer = self.options.infer_types
        for key, value in row.items():
            if key in self._columns or (key == "properties" and isinstance(nested, dict)):
                continue
            if value is None and drop_nulls:
                continue
            if type(value) not in _PLAIN:
                value = _jsonable(value)
            elif infer and type(value) is str:
                value = _infer(value)
            props[key] = value
        head: dict[str, Any] = {}
        raw_time = row.get(o.time_column)
        if raw_time is not None:
            head["time"] = self.parse_time(raw_time)
        elif "time" in props:
            head["time"] = self.parse_time(props.pop("time"))
        distinct_id = row.get(o.distinct_id_column)
        if distinct_id is not None:
            head["distinct_id"] = distinct_id if type(distinct_id) in _PLAIN else _jsonable(distinct_id)
        insert_id = row.get(o.insert_id_column)
        if insert_id is not None and insert_id != "":
            head["$insert_id"] = insert_id if isinstance(insert_id, str) else str(insert_id)
        props = {**head, **{k: v for k, v in props.items() if k not in head}}
        event: dict[str, Any] = {"event": row.get(o.event_column), "properties": props}
        if props.get("$insert_id") is None:
            props["$insert_id"] = insert_id_for(event)
        return event

    def parse_time(self, value: Any) -> Any:
        """Epoch seconds or ms, numeric strings, ISO-8601 with or without zone, datetimes.

        The result is what the server understands: a number (ISO and datetime values become
        integer milliseconds). A value that cannot be read is returned unchanged, so the
        shared validator refuses it with the server's own message.
        """
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return self._unit(value)
        if isinstance(value, dt.datetime):
            return self._datetime_ms(value)
        if isinstance(value, dt.date):
            return self._datetime_ms(dt.datetime(value.year, value.month, value.day))
        if isinstance(value, decimal.Decimal):
            return self._unit(float(value))
        if not isinstance(value, str):
            return value
        text = value.strip()
        if _INT_RE.fullmatch(text):
            return self._unit(int(text))
        if _FLOAT_RE.fullmatch(text):
            return self._unit(float(text))
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            return value
        return self._datetime_ms(parsed)

    def _unit(self, number: int | float) -> int | float:
        unit = self.options.time_unit
        if unit == "s":
            return round(number * 1000) if abs(number) <= MS_THRESHOLD else number
        if unit == "ms":
            return round(number)
        return number

    def _datetime_ms(self, value: dt.datetime) -> int:
        if value.tzinfo is None:
            value = value.replace(tzinfo=self._zone)
        return round(value.timestamp() * 1000)


def _jsonable(value: Any) -> Any:
    """Parquet and Python values (datetimes, decimals, bytes, tuples) as JSON values."""
    if value is None or type(value) in _PLAIN:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            # pyarrow gives a map column as a list of (key, value) pairs
            return {str(k): _jsonable(v) for k, v in value}
        return [_jsonable(v) for v in value]
    return _json_default(value)


def _infer(text: str) -> Any:
    """CSV cells as numbers or booleans where they plainly are (`007` stays a string)."""
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text) and "." in text:
        return float(text)
    lower = text.lower()
    if lower == "true":
        return True
    if lower == "false":
        return False
    return text


def chunks_from_events(events: Iterable[Any], source_index: int = 0, size: int = 2000) -> Iterable[Chunk]:
    """Wrap in-memory events (the Python API's `import_events`) as chunks."""
    rows: list[Any] = []
    index = 0
    for event in events:
        rows.append(event)
        index += 1
        if len(rows) >= size:
            yield Chunk(source_index, index, list(range(index - len(rows), index)), rows=rows, kind="event")
            rows = []
    if rows:
        yield Chunk(source_index, index, list(range(index - len(rows), index)), rows=rows, kind="event")
