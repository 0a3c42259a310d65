"""The ingest pipeline: the fast paths must decide exactly what the full rules decide.

Bodies of events decode to `CheckedEvent`s when every property is within the limits, and
such batches are accepted column by column (`_accept_checked_batch`) or event by event
(`_accept_checked`). The generic path (`_validate_one` over plain dicts) defines the rules;
these tests feed the same bodies through both and require identical batches: same stored
rows and bytes, same refusals, same ignored count.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import msgspec
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.errors import RecordError
from eventkeep.ingest import validate
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.payload import CheckedEvent, parse_body
from eventkeep.ingest.pipeline import EventRequest, check_events
from eventkeep.ingest.validate import IngestContext, validate_events

NOW_MS = 1_800_000_000_000
NOW_S = NOW_MS // 1000
CONTEXTS = [IngestContext("import", NOW_MS, "api.test"), IngestContext("track", NOW_MS, "api.test", "fallback-id")]

MISSING = object()

names = st.sampled_from(["Played", "Signed up", "é vent", "", "   ", "x" * 256, "y" * 255, 5, None, MISSING])
times = st.sampled_from(
    [NOW_S - 60, NOW_S - 86400 * 30, (NOW_S - 60) * 1000, NOW_S - 60.5, NOW_S - 0.0005, 1.5e9, NOW_S + 60,
     NOW_S + 86400, 0, -5, 31_535_999, 10_000_000_000, 10_000_000_001, "123", True, None, MISSING]
)
distinct_ids = st.sampled_from(
    ["u1", "user-2", "", " anon ", "null", "NULL", "\u00a0none\u00a0", 'say "hi"', "tab\there", "x" * 300, 42, 4.5,
     True, None, [1], MISSING]
)
insert_ids = st.sampled_from(
    ["abc-123", "A-1", "bad id!", "x" * 36, "x" * 37, "null", "Undefined", "", 5, None, MISSING]
)
tokens = st.sampled_from(["tok", "", 7, None, MISSING])
extras = st.dictionaries(
    st.sampled_from(["plan", "price", "tags", "cart", "long", "deep", "$ignore", "k" * 256, "$import", "n",
                     "$mp_event_size", "$mp_api_endpoint"]),
    st.sampled_from(
        ["pro", 1.25, -3, 2**70, True, None, "z" * 300, ["a", "b"], [["a"]], {"a": {"b": 1}},
         {"a": {"b": {"c": 1}}}, [[[[1]]]], list(range(300)), False, ""]
    ),
    max_size=4,
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, strategy in (("time", times), ("distinct_id", distinct_ids), ("$insert_id", insert_ids), ("token", tokens)):
        value = draw(strategy)
        if value is not MISSING:
            props[key] = value
    props.update(draw(extras))
    item: dict[str, Any] = {"properties": props}
    name = draw(names)
    if name is not MISSING:
        item["event"] = name
    return item


def realistic(count: int) -> list[dict[str, Any]]:
    return [
        {"event": f"Event {i % 3}", "properties": {
            "time": NOW_S - 1000 + i, "distinct_id": f"user-{i}", "$insert_id": f"id-{i}", "token": "tok",
            "price": i / 4, "tags": ["a", str(i)], "cart": {"n": i}, "ok": i % 2 == 0, "none": None,
        }}
        for i in range(count)
    ]


def both_ways(body: bytes, ctx: IngestContext) -> tuple[ValidBatch, ValidBatch, bool]:
    fast_items = parse_body(body, "application/x-ndjson", {}, events=True).items
    checked = bool(fast_items) and type(fast_items[0]) is CheckedEvent
    slow = parse_body(body, "application/x-ndjson", {})
    return validate_events(fast_items, ctx), validate_events(slow.items, ctx, slow.line_errors), checked


def same(a: ValidBatch, b: ValidBatch) -> None:
    assert a.rows.equals(b.rows)
    assert a.tokens == b.tokens
    assert a.indexes == b.indexes
    assert a.errors == b.errors
    assert a.ignored == b.ignored


@pytest.fixture(autouse=True)
def fixed_insert_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated ids are random; the comparison needs them equal on both paths."""
    monkeypatch.setattr(validate, "_new_insert_id", lambda: "generated")


def ndjson(items: list[dict[str, Any]]) -> bytes:
    return b"\n".join(msgspec.json.encode(item) for item in items)


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["import", "track"])
def test_a_clean_batch_takes_the_column_path_and_matches_the_rules(ctx: IngestContext, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = validate._accept_checked_batch

    def spy(*args: Any) -> Any:
        result = original(*args)
        calls.append(0 if result is None else len(result))
        return result

    monkeypatch.setattr(validate, "_accept_checked_batch", spy)
    items = realistic(500)
    fast, slow, checked = both_ways(ndjson(items), ctx)
    assert checked and calls == [500], "the whole batch should be accepted by the column path"
    same(fast, slow)
    assert len(fast) == 500 and not fast.errors
    stored = json.loads(fast.properties[3])
    assert "token" not in stored and "time" not in stored and "distinct_id" not in stored
    assert stored["$mp_event_size"] == len(json.dumps(items[3], separators=(",", ":")))
    assert fast.tokens == ["tok"] * 500


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(events(), min_size=1, max_size=12), track=st.booleans())
def test_fast_paths_decide_exactly_as_the_full_rules(batch: list[dict[str, Any]], track: bool) -> None:
    fast, slow, _ = both_ways(ndjson(batch), CONTEXTS[track])
    same(fast, slow)
    items = parse_body(ndjson(batch), "application/x-ndjson", {}, events=True).items
    decisions = validate_events(items, CONTEXTS[track], decisions_only=True)
    assert (decisions.indexes, decisions.errors, decisions.ignored) == (slow.indexes, slow.errors, slow.ignored)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(odd=st.lists(events(), min_size=1, max_size=3), at=st.integers(0, 40), track=st.booleans())
def test_one_odd_event_in_a_clean_batch_changes_only_itself(odd: list[dict[str, Any]], at: int, track: bool) -> None:
    items = realistic(40)
    items[at:at] = odd
    fast, slow, _ = both_ways(ndjson(items), CONTEXTS[track])
    same(fast, slow)
    assert len(fast) + len(fast.errors) + fast.ignored == len(items)


@pytest.mark.parametrize("track", [False, True], ids=["import", "track"])
@pytest.mark.parametrize("decisions_only", [False, True], ids=["stored", "decisions"])
def test_only_the_too_old_event_of_a_clean_batch_is_refused(track: bool, decisions_only: bool) -> None:
    """The column path bounds the batch's times by its oldest and newest event."""
    items = realistic(30)
    too_old = NOW_S - 6 * 86400 if track else 1_000_000  # over /track's 5 days; before 1971
    items[17]["properties"]["time"] = too_old
    parsed = parse_body(ndjson(items), "application/x-ndjson", {}, events=True).items
    checked = validate_events(parsed, CONTEXTS[track], decisions_only=decisions_only)
    assert [e.index for e in checked.errors] == [17]
    assert checked.indexes == [i for i in range(30) if i != 17]


def test_a_json_array_body_is_checked_the_same_way() -> None:
    items = [*realistic(20), {"event": "x", "properties": {"time": "bad", "distinct_id": "u"}}]
    body = msgspec.json.encode(items)
    fast = validate_events(parse_body(body, "application/json", {}, events=True).items, CONTEXTS[0])
    slow = validate_events(parse_body(body, "application/json", {}).items, CONTEXTS[0])
    same(fast, slow)
    assert [e.index for e in fast.errors] == [20]


def test_a_batch_survives_pickling_as_arrow() -> None:
    batch = ValidBatch.from_columns(
        events=["a", "b"], distinct_ids=["u", "v"], times_ms=[1, 2], insert_ids=["i", "j"],
        properties=[b'{"x":1}', "{}"], tokens=["t", None], indexes=[3, 7],
        errors=[RecordError(5, "k", "event", "bad")], ignored=2,
    )
    copy = pickle.loads(pickle.dumps(batch))
    assert copy.rows.equals(batch.rows)
    assert (copy.tokens, copy.indexes, copy.errors, copy.ignored) == (["t", None], [3, 7], batch.errors, 2)
    assert copy.properties == [b'{"x":1}', b"{}"]
    assert copy.select([1]).rows.to_pylist() == [
        {"event": "b", "distinct_id": "v", "time_ms": 2, "insert_id": "j", "properties": "{}"}
    ]
    assert len(pickle.loads(pickle.dumps(ValidBatch()))) == 0
    assert ValidBatch().rows.schema == copy.rows.schema == pa.schema(batch.rows.schema)


def request(body: bytes, endpoint: Any = "import", **kwargs: Any) -> EventRequest:
    return EventRequest(endpoint, body, "application/x-ndjson", {}, NOW_MS, **kwargs)


def test_check_events_reports_errors_as_values() -> None:
    broken = check_events(request(b"[{"))
    assert broken.error is not None and broken.error[0] == 400 and not broken.decoded
    too_many = check_events(request(ndjson(realistic(2001))))
    assert too_many.error == (413, "request exceeds max limit of 2000 records")
    assert too_many.decoded and too_many.count == 2001 and len(too_many.batch) == 0
    with pytest.raises(Exception, match="2000 records"):
        too_many.raise_error()


def test_track_with_ip_derives_a_distinct_id_from_the_client_address() -> None:
    body = ndjson([{"event": "e", "properties": {"time": NOW_S - 5, "token": "t"}}])
    plain = EventRequest("track", body, "application/x-ndjson", {}, NOW_MS, client_host="10.1.2.3")
    with_ip = EventRequest("track", body, "application/x-ndjson", {"ip": "1"}, NOW_MS, client_host="10.1.2.3")
    assert check_events(plain).batch.errors[0].field == "properties.distinct_id"
    assert check_events(with_ip).batch.distinct_ids == [validate.distinct_id_for_address("10.1.2.3")]


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["import", "track"])
def test_sizes_follow_from_the_encoded_properties_and_an_oversized_event_undoes_the_edits(ctx: IngestContext) -> None:
    """`$mp_event_size` is computed, not re-encoded: check it against the rules on events
    with and without tokens, with generated and null `$insert_id`s, escaped strings and
    float times; then add an event over 1 MB, which sends the batch the long way after its
    edits are undone (the long way must see exactly the original events)."""
    items = realistic(30)
    for i, item in enumerate(items):
        props = item["properties"]
        if i % 3 == 0:
            del props["token"]
        if i % 4 == 1:
            del props["$insert_id"]
        if i % 4 == 2:
            props["$insert_id"] = None
        if i % 5 == 0:
            props["time"] = NOW_S - 100.25
            props["quote"] = 'say "hi" \\ é \n'
    fast, slow, checked = both_ways(ndjson(items), ctx)
    assert checked
    same(fast, slow)
    sizes = [json.loads(p)["$mp_event_size"] for p in fast.properties]
    assert sizes == [len(msgspec.json.encode(item)) for item in items]

    # distinct_ids that JSON escapes, or that are not ASCII, are longer encoded than plain
    odd = realistic(6)
    for item, distinct_id in zip(odd, ['say "hi"', "back\\slash", "tab\there", "\u00fcn\u00ef", "\u2028", "plain"], strict=True):
        item["properties"]["distinct_id"] = distinct_id
    fast, slow, checked = both_ways(ndjson(odd), ctx)
    assert checked and len(fast) == 6
    same(fast, slow)
    assert [json.loads(p)["$mp_event_size"] for p in fast.properties] == [len(msgspec.json.encode(i)) for i in odd]

    big = {"event": "Big", "properties": {"time": NOW_S - 5, "distinct_id": "u", "$insert_id": "big-1",
                                          "rows": [["x" * 20] * 254] * 254}}
    with_big = [*items, big]
    fast, slow, checked = both_ways(ndjson(with_big), ctx)
    assert checked
    same(fast, slow)
    assert [(e.index, e.message) for e in fast.errors] == [(30, "event is invalid: must be smaller than 1MB of uncompressed JSON")]
    assert len(fast) == 30


@pytest.mark.parametrize("ctx", CONTEXTS, ids=["import", "track"])
def test_keys_the_server_adds_replace_an_events_own(ctx: IngestContext) -> None:
    """Each key appears once in a stored object, with the server's value."""
    items = realistic(20)
    items[3]["properties"]["$mp_api_endpoint"] = "spoofed.example"
    items[9]["properties"]["$mp_event_size"] = 1
    items[12]["properties"]["cart"] = {"$mp_event_size": 2}  # nested: the event's own
    fast, slow, checked = both_ways(ndjson(items), ctx)
    assert checked
    same(fast, slow)
    for stored, item in zip(fast.properties, items, strict=True):
        assert stored.count(b'"$mp_api_endpoint"') == 1 and stored.count(b'"$mp_event_size"') == (
            2 if item is items[12] else 1
        )
        props = json.loads(stored)
        assert props["$mp_api_endpoint"] == "api.test"
        assert props["$mp_event_size"] == len(msgspec.json.encode(item))
