"""The compiled clean-batch path against the Python validator, which defines the rules.

Whatever the scanner accepts, it must store exactly what `validate_events` stores: the same
rows byte for byte, tokens and indexes. Bodies are generated as JSON text, so that escapes,
number spellings, duplicate keys and white space vary as real clients vary them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.ingest import _cleanbatch, fastpath, limits, pipeline
from eventkeep.ingest.payload import body_shape, parse_body
from eventkeep.ingest.pipeline import EventRequest, check_events
from eventkeep.ingest.validate import IngestContext, validate_events

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from common import realistic_events

NOW_MS = 1_800_000_000_000


def python_path(body: bytes, content_type: str, ctx: IngestContext) -> Any:
    payload = parse_body(body, content_type, {}, events=True)
    return validate_events(payload.items, ctx, payload.line_errors)


def assert_same(fast: Any, slow: Any) -> None:
    assert slow.errors == []
    assert slow.ignored == 0
    assert fast.rows.schema == slow.rows.schema
    for name in fast.rows.column_names:
        assert fast.rows.column(name).to_pylist() == slow.rows.column(name).to_pylist(), name
    assert fast.rows.equals(slow.rows)
    assert fast.tokens == slow.tokens
    assert fast.indexes == slow.indexes


def test_the_scanner_holds_the_same_limits() -> None:
    assert _cleanbatch.MAX_EVENTS == limits.MAX_EVENTS_PER_REQUEST
    assert _cleanbatch.MAX_STRING_CHARS == limits.MAX_STRING_CHARS
    assert _cleanbatch.MAX_ITEMS == limits.MAX_PROPERTIES - 1 == limits.MAX_ARRAY_ELEMENTS - 1
    assert _cleanbatch.MAX_ITEMS == limits.MAX_OBJECT_KEYS - 1
    assert _cleanbatch.MAX_EVENT_BYTES == limits.MAX_EVENT_BYTES
    assert _cleanbatch.MIN_TIME_MS == limits.MIN_TIME_MS
    assert _cleanbatch.MS_THRESHOLD == limits.MS_THRESHOLD
    assert _cleanbatch.TRACK_MAX_AGE_MS == limits.TRACK_MAX_AGE_MS


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_are_written_as_msgspec_writes_them(value: float) -> None:
    assert _cleanbatch.encode_float(value) == msgspec.json.encode(value)


@pytest.mark.parametrize("shape", ["ndjson", "json"])
@pytest.mark.parametrize("endpoint", ["import", "track"])
def test_a_realistic_batch_takes_the_compiled_path(shape: str, endpoint: str) -> None:
    events = list(realistic_events(2000, duplicate_share=0.05, start_s=NOW_MS // 1000 - 86400, span_s=3600))
    for number, event in enumerate(events[:50]):
        event = json.loads(json.dumps(event))
        event["properties"]["token"] = f"tok-{number % 3}"
        event["properties"]["note"] = "café \"quoted\" \\ tab\t ☃ 😀"
        events[number] = event
    if shape == "ndjson":
        body = b"\n".join(json.dumps(event).encode() for event in events)
    else:
        body = json.dumps(events, ensure_ascii=False, indent=1).encode()
    ctx = IngestContext(endpoint, NOW_MS, "api.test")  # type: ignore[arg-type]
    fast = fastpath.accept_clean_body(body, shape, ctx)  # type: ignore[arg-type]
    assert fast is not None
    assert len(fast) == 2000
    assert fast.tokens[:4] == ["tok-0", "tok-1", "tok-2", "tok-0"]
    assert fast.tokens[50:] == [None] * 1950
    assert_same(fast, python_path(body, "application/json", ctx))


def _big_event(strings: int, length: int) -> dict[str, Any]:
    props: dict[str, Any] = {"time": 1_700_000_000, "distinct_id": "u", "$insert_id": "big"}
    for key in range(strings // 250 + 1):
        props[f"list{key}"] = ["x" * length] * min(250, strings - key * 250)
    return {"event": "big", "properties": props}


def test_an_event_of_1mb_goes_the_python_way_and_one_just_under_does_not() -> None:
    ctx = IngestContext("import", NOW_MS)
    over = json.dumps(_big_event(4100, 255)).encode()
    size = len(msgspec.json.encode(_big_event(4100, 255)))
    assert size >= limits.MAX_EVENT_BYTES
    assert fastpath.accept_clean_body(over, "ndjson", ctx) is None
    assert python_path(over, "application/x-ndjson", ctx).errors[0].message.endswith("1MB of uncompressed JSON")

    under_event = _big_event(4100, 247)
    under = json.dumps(under_event, indent=2).replace("\n", " ").encode()
    assert len(msgspec.json.encode(under_event)) < limits.MAX_EVENT_BYTES < len(under)
    fast = fastpath.accept_clean_body(under, "ndjson", ctx)
    assert fast is not None
    assert_same(fast, python_path(under, "application/x-ndjson", ctx))


def test_more_than_2000_events_are_left_to_the_python_path() -> None:
    body = b"\n".join(msgspec.json.encode(event) for event in realistic_events(2001, start_s=1_700_000_000))
    assert fastpath.accept_clean_body(body, "ndjson", IngestContext("import", NOW_MS)) is None


def test_check_events_answers_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"\n".join(msgspec.json.encode(event) for event in realistic_events(300, start_s=1_700_000_000))
    request = EventRequest("import", body, "application/x-ndjson", {"strict": "1"}, NOW_MS, "h")
    fast = check_events(request)
    monkeypatch.setattr(pipeline, "accept_clean_body", lambda *args: None)
    slow = check_events(request)
    assert (fast.encoding, fast.params, fast.count, fast.error) == (slow.encoding, slow.params, slow.count, slow.error)
    assert_same(fast.batch, slow.batch)


@pytest.mark.parametrize("special", ['"', "\\", "\t", "/", "\x7f", "é", "😀", "\u2028"])
def test_a_special_character_at_any_place_in_a_string_scans_alike(special: str) -> None:
    """The scanner skips plain text sixteen bytes at a time: a character that ends the run
    must be seen wherever it falls in those sixteen, and in the tail after the last."""
    events = []
    for length in range(40):
        for at in range(length + 1):
            text = "x" * at + special + "y" * (length - at)
            props = {"time": 1_700_000_000, "distinct_id": "u" + text, "$insert_id": f"i{len(events)}", "k" + text: text}
            events.append({"event": "E" + text, "properties": props})
    ctx = IngestContext("import", NOW_MS)
    body = b"\n".join(json.dumps(event, ensure_ascii=False).encode() for event in events)
    fast = fastpath.accept_clean_body(body, "ndjson", ctx)
    assert fast is not None
    assert len(fast) == len(events)
    assert_same(fast, python_path(body, "application/x-ndjson", ctx))
    assert fastpath.clean_lines(body, ctx) == len(events)


def test_a_raw_control_character_at_any_place_in_a_string_is_not_clean() -> None:
    ctx = IngestContext("import", NOW_MS)
    for length in range(20):
        for at in range(length + 1):
            text = "x" * at + "\x01" + "y" * (length - at)
            props = f'"time":1700000000,"distinct_id":"u","$insert_id":"i","p":"{text}"'
            line = '{"event":"E","properties":{' + props + "}}"
            assert fastpath.accept_clean_body(line.encode(), "ndjson", ctx) is None, (length, at)
            assert fastpath.clean_lines(line.encode(), ctx) is None


# ---- generated bodies ----

_KEYS = ["plan", "a", "é", "tags", "$browser", "time", "distinct_id", "$insert_id", "token",
         "$ignore", "$import", "$mp_event_size", "mp_processing_time_ms", "$mp_api_endpoint", "k" * 256]
_STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", " ", "\t", "null", " None ", "anon", "x" * 255, "x" * 256, "é" * 255, "é" * 256,
                     "\u2028", "\x7f", "a/b", "\u3000", "\u212aunknown", "un\u212anown", " \u3000null\u00a0", "\u0130",
                     "\u3000\u00a0", "00000000-0000-0000-0000-000000000000"]),
)


def _string_text(draw: Any, value: str) -> str:
    style = draw(st.sampled_from(["raw", "ascii", "escaped"]))
    if style == "raw":
        return json.dumps(value, ensure_ascii=False)
    if style == "ascii":
        return json.dumps(value)
    return '"' + "".join(f"\\u{unit:04x}" for unit in _utf16(value)) + '"'


def _utf16(value: str) -> list[int]:
    data = value.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


@st.composite
def _number_text(draw: Any, clean: bool = False) -> str:
    kind = draw(st.sampled_from(["int", "float", "fixed", "exp"] if clean else ["int", "big", "float", "fixed", "exp", "odd"]))
    if kind == "int":
        return str(draw(st.integers(-(10**15), 10**15)))
    if kind == "big":
        return str(draw(st.integers(-(10**20), 10**20)))
    if kind == "float":
        return repr(draw(st.floats(allow_nan=False, allow_infinity=False)))
    if kind == "fixed":
        return f"{draw(st.floats(-1e6, 1e6)):.{draw(st.integers(0, 6))}f}"
    if kind == "exp":
        return f"{draw(st.floats(-1e30, 1e30)):.{draw(st.integers(0, 4))}e}"
    return draw(st.sampled_from(["-0", "-0.0", "0.0", "1E5", "1.50", "0.000001", "0.00001", "1e400",
                                 "123456789012345678", "2.5e-7", "1.0", "007", "1.", ".5", "+1", "0.1e1"]))


@st.composite
def _value_text(draw: Any, depth: int = 0, clean: bool = False) -> str:
    """A property value; `clean`: within every limit, as most values are."""
    deepest = 2 if clean else 3
    kind = draw(st.sampled_from(["string", "number", "literal", "list", "object"] if depth < deepest else ["string", "number"]))
    if kind == "string":
        return _string_text(draw, draw(st.text(max_size=8) if clean else _STRINGS))
    if kind == "number":
        return draw(_number_text(clean))
    if kind == "literal":
        return draw(st.sampled_from(["true", "false", "null"] if clean else ["true", "false", "null", "nul", "True"]))
    if kind == "list":
        size = draw(st.sampled_from([0, 1, 2, 3] if clean else [0, 1, 2, 3, 254, 255]))
        if size > 3:
            return "[" + ",".join(["1"] * size) + "]"
        return "[" + ", ".join(draw(_value_text(depth + 1, clean)) for _ in range(size)) + "]"
    names = ["a", "b", "é", "x"] if clean else ["a", "b", "é", "k" * 256, "x"]
    keys = draw(st.lists(st.sampled_from(names), max_size=3, unique=clean))
    return "{" + ",".join(f"{_string_text(draw, key)}:{draw(_value_text(depth + 1, clean))}" for key in keys) + "}"


_ASPECTS = ["time", "distinct_id", "insert_id", "properties", "token", "name", "fields"]


@st.composite
def _event_text(draw: Any, newlines: bool, scale: str) -> str:
    """An event, clean but for at most one aspect (so that each rule is tested alone)."""
    odd = draw(st.sampled_from([None, None, *_ASPECTS]))
    pairs: list[tuple[str, str]] = []
    base_s = NOW_MS / 1000 - 3600
    time_kind = draw(st.sampled_from(["s", "s_float", "ms", "ms_float", "old", "future", "week", "text", "none"])
                     if odd == "time" else st.sampled_from([scale, scale + "_float"]))
    time_text = {
        "s": str(int(base_s) - draw(st.integers(0, 10**6))),
        "s_float": repr(base_s - draw(st.floats(0, 1e6))),
        "ms": str(NOW_MS - draw(st.integers(0, 10**9))),
        "ms_float": repr(NOW_MS - draw(st.floats(0, 1e9))),
        "old": str(draw(st.sampled_from([0, -5, 31_535_999, 31_536_000]))),
        "future": str(NOW_MS + draw(st.integers(1, 7_200_000))),
        "week": str(NOW_MS // 1000 - 6 * 86400),
        "text": '"1700000000"',
        "none": "",
    }[time_kind]
    if time_text:
        pairs.append(("time", time_text))
    if odd != "distinct_id":
        distinct_id = _string_text(draw, draw(st.sampled_from(["user-1", "x" * 40, "7", "user-2", "u-é", "\u3000x", "日本"])))
    else:
        distinct_id = draw(st.one_of(_STRINGS.map(lambda value: json.dumps(value)), _value_text(), st.just("")))
    if distinct_id:
        pairs.append(("distinct_id", distinct_id))
    if odd != "insert_id":
        insert_id = _string_text(draw, draw(st.sampled_from(["abc-123", "A" * 36])))
    else:
        insert_id = draw(st.one_of(
            st.sampled_from(["", "a" * 37, "a_b", "null", "NaN", "-1", "ok-1", "é", "nil", "0"]).map(json.dumps),
            _value_text(), st.just("")))
    if insert_id:
        pairs.append(("$insert_id", insert_id))
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(_KEYS))
        if odd != "properties" and key in _KEYS[5:]:
            continue
        pairs.append((key, draw(_value_text(clean=odd != "properties"))))
    if odd == "token" or draw(st.integers(0, 4)) == 0:
        token = draw(_value_text()) if odd == "token" else _string_text(draw, draw(st.sampled_from(["t1", "t2", "é"])))
        pairs.append(("token", token))
    order = draw(st.permutations(range(len(pairs))))
    ws = draw(st.sampled_from(["", " ", "\t", " \r "] + (["\n", " \n  "] if newlines else [])))
    body = "{" + ws + ("," + ws).join(f"{_string_text(draw, pairs[i][0])}{ws}:{ws}{pairs[i][1]}" for i in order) + "}"
    if odd == "name":
        name = draw(st.one_of(_STRINGS.map(lambda value: json.dumps(value)), _value_text()))
    else:
        name = _string_text(draw, draw(st.sampled_from(["Signed up", "é", "x", "購入"])))
    fields = [f'"event":{name}', f'"properties":{ws}{body}']
    if odd == "fields":
        fields.append(draw(st.sampled_from(['"extra":1', '"event":"again"', '"properties":{}'])))
    if draw(st.booleans()):
        fields.reverse()
    return "{" + ws + ",".join(fields) + ws + "}"


@st.composite
def _bodies(draw: Any) -> tuple[bytes, str]:
    shape = draw(st.sampled_from(["ndjson", "json"]))
    scale = draw(st.sampled_from(["s", "ms"]))  # a batch of clean events keeps to one
    events = draw(st.lists(_event_text(newlines=shape == "json", scale=scale), min_size=1, max_size=4))
    if shape == "ndjson":
        text = draw(st.sampled_from(["\n", "\r\n", "\n\n  \n"])).join(events)
    else:
        text = "[" + draw(st.sampled_from([",", ",\n", " , "])).join(events) + "]"
    text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", "\n", " "]))
    return text.encode("utf-8", "surrogatepass"), shape


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies(), st.sampled_from(["import", "track"]))
def test_what_the_scanner_accepts_is_what_python_stores(case: tuple[bytes, str], endpoint: str) -> None:
    body, shape = case
    content_type = "application/x-ndjson" if shape == "ndjson" else "application/json"
    assert body_shape(body, content_type) == shape
    ctx = IngestContext(endpoint, NOW_MS, "api.test")  # type: ignore[arg-type]
    fast = fastpath.accept_clean_body(body, shape, ctx)  # type: ignore[arg-type]
    if fast is None:
        return
    assert_same(fast, python_path(body, content_type, ctx))


def test_generated_bodies_often_take_the_compiled_path() -> None:
    """The property above is only as strong as the share of bodies the scanner accepts."""
    accepted = 0
    total = 0

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None,
              derandomize=True)
    @given(_bodies())
    def count(case: tuple[bytes, str]) -> None:
        nonlocal accepted, total
        total += 1
        if fastpath.accept_clean_body(case[0], case[1], IngestContext("import", NOW_MS)) is not None:  # type: ignore[arg-type]
            accepted += 1

    count()
    assert total >= 100
    assert accepted >= total // 5
