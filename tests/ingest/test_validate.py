"""Every validation rule of spec §2.3 (and §3.4 for /track), as pure functions."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.limits import DISALLOWED_IDS
from eventkeep.ingest.payload import OutOfRange
from eventkeep.ingest.validate import IngestContext, compact_size_bound, validate_events

NOW_MS = 1_800_000_000_000  # a fixed "now": 2027-01-15
NOW_S = NOW_MS // 1000
IMPORT = IngestContext("import", NOW_MS, "api.example.test")
TRACK = IngestContext("track", NOW_MS, "api.example.test")


def ev(name: Any = "Played", **props: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"time": NOW_S - 60, "distinct_id": "u1", "$insert_id": "abc-123"}
    base.update(props)
    return {"event": name, "properties": base}


def without(prop: str) -> dict[str, Any]:
    e = ev()
    del e["properties"][prop]
    return e


def one(item: Any, ctx: IngestContext = IMPORT) -> ValidBatch:
    return validate_events([item], ctx)


def error_of(item: Any, ctx: IngestContext = IMPORT) -> tuple[str, str]:
    batch = one(item, ctx)
    assert len(batch) == 0, "expected the event to be refused"
    [error] = batch.errors
    assert error.index == 0
    return error.field, error.message


def stored(item: Any, ctx: IngestContext = IMPORT) -> dict[str, Any]:
    batch = one(item, ctx)
    assert not batch.errors, batch.errors
    assert len(batch) == 1
    return json.loads(batch.properties[0])


# -- event name ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "   "])
def test_event_must_not_be_missing_or_blank(name: Any) -> None:
    item = ev(name) if name is not None else {"properties": ev()["properties"]}
    assert error_of(item) == ("event", "'event' must not be missing or blank")


def test_event_name_must_be_a_string() -> None:
    assert error_of(ev(42)) == ("event", "'event' is invalid: must be a string")


def test_event_name_is_truncated_to_255_characters() -> None:
    batch = one(ev("x" * 300))
    assert batch.events == ["x" * 255]


def test_an_item_that_is_not_an_object_is_refused() -> None:
    assert error_of([1, 2])[0] == "event"


def test_properties_must_be_an_object() -> None:
    assert error_of({"event": "a", "properties": [1]}) == (
        "properties",
        "'properties' is invalid: must be a JSON object",
    )


# -- time -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1700000000", True, None, [1], {"s": 1}])
def test_time_must_be_a_number(value: Any) -> None:
    assert error_of(ev(time=value)) == (
        "properties.time",
        "'properties.time' is invalid: must be specified as seconds since epoch",
    )


def test_time_is_required_on_import() -> None:
    assert error_of(without("time")) == (
        "properties.time",
        "'properties.time' is invalid: must be specified as seconds since epoch",
    )


def test_seconds_and_milliseconds_are_told_apart_at_1e10() -> None:
    seconds = NOW_S - 100
    assert one(ev(time=seconds)).times_ms == [seconds * 1000]
    assert one(ev(time=seconds * 1000 + 7)).times_ms == [seconds * 1000 + 7]
    assert one(ev(time=seconds + 0.25)).times_ms == [seconds * 1000 + 250]
    # 9,999,999,999 is seconds (year 2286, refused as future), 10,000,000,001 is ms (1970-04)
    assert error_of(ev(time=9_999_999_999))[1].endswith("must not be in the future")
    assert error_of(ev(time=10_000_000_001))[1].endswith("must not be before 1971-01-01")


def test_time_before_1971_is_refused_and_1971_is_accepted() -> None:
    assert error_of(ev(time=31_535_999)) == (
        "properties.time",
        "'properties.time' is invalid: must not be before 1971-01-01",
    )
    assert one(ev(time=31_536_000)).times_ms == [31_536_000_000]


def test_time_up_to_an_hour_ahead_is_clamped_to_now() -> None:
    assert one(ev(time=NOW_S + 3599)).times_ms == [NOW_MS]
    assert one(ev(time=NOW_S + 3600)).times_ms == [NOW_MS]


def test_time_more_than_an_hour_ahead_is_refused() -> None:
    assert error_of(ev(time=NOW_S + 3601)) == (
        "properties.time",
        "'properties.time' is invalid: must not be in the future",
    )


def test_import_takes_old_events() -> None:
    four_years = 4 * 365 * 24 * 3600
    assert one(ev(time=NOW_S - four_years)).times_ms == [(NOW_S - four_years) * 1000]


def test_track_refuses_events_older_than_five_days() -> None:
    five_days = 5 * 24 * 3600
    assert one(ev(time=NOW_S - five_days + 10), TRACK).times_ms == [(NOW_S - five_days + 10) * 1000]
    field, message = error_of(ev(time=NOW_S - five_days - 10), TRACK)
    assert field == "properties.time"
    assert "older than 5 days" in message


def test_track_without_time_means_now() -> None:
    assert one(without("time"), TRACK).times_ms == [NOW_MS]


# -- distinct_id ----------------------------------------------------------------------------


def test_distinct_id_is_required() -> None:
    assert error_of(without("distinct_id")) == (
        "properties.distinct_id",
        "'properties.distinct_id' is invalid: must not be missing",
    )


def test_empty_distinct_id_is_allowed() -> None:
    assert one(ev(distinct_id="")).distinct_ids == [""]


def test_numeric_distinct_id_becomes_a_string() -> None:
    assert one(ev(distinct_id=12345)).distinct_ids == ["12345"]


@pytest.mark.parametrize("value", [True, [1], {"a": 1}])
def test_distinct_id_of_other_types_is_refused(value: Any) -> None:
    assert error_of(ev(distinct_id=value)) == (
        "properties.distinct_id",
        "'properties.distinct_id' is invalid: must be a string or a number",
    )


@pytest.mark.parametrize("value", [*sorted(DISALLOWED_IDS), "NULL", "Undefined", " anonymous "])
def test_placeholder_distinct_ids_are_refused_case_insensitively(value: str) -> None:
    field, message = error_of(ev(distinct_id=value))
    assert field == "properties.distinct_id"
    assert message == f"'properties.distinct_id' is invalid: {value!r} is a placeholder, not a user id"


def test_numeric_zero_distinct_id_is_a_placeholder() -> None:
    assert error_of(ev(distinct_id=0))[0] == "properties.distinct_id"


def test_simplified_id_merge_derives_distinct_id() -> None:
    e = without("distinct_id")
    e["properties"]["$user_id"] = "alice"
    assert one(e).distinct_ids == ["alice"]
    e = without("distinct_id")
    e["properties"]["$device_id"] = "dev-9"
    assert one(e).distinct_ids == ["$device:dev-9"]


def test_track_ip_fallback_distinct_id() -> None:
    ctx = IngestContext("track", NOW_MS, fallback_distinct_id="hashed-ip")
    assert one(without("distinct_id"), ctx).distinct_ids == ["hashed-ip"]


# -- $insert_id ------------------------------------------------------------------------------


def test_insert_id_characters() -> None:
    assert error_of(ev(**{"$insert_id": "ajs-next-1:2"})) == (
        "$insert_id",
        "'$insert_id' is invalid: must only contain alphanumeric or hyphen '-' characters",
    )


def test_insert_id_error_reports_the_insert_id() -> None:
    batch = one(ev(**{"$insert_id": "bad id"}))
    assert batch.errors[0].insert_id == "bad id"


def test_insert_id_length_is_36_bytes_at_most() -> None:
    assert len(one(ev(**{"$insert_id": "a" * 36}))) == 1
    assert error_of(ev(**{"$insert_id": "a" * 37})) == (
        "$insert_id",
        "'$insert_id' is invalid: must be at most 36 bytes",
    )


@pytest.mark.parametrize("value", ["null", "Undefined", "0", "-1", "none"])
def test_insert_id_placeholders_are_refused(value: str) -> None:
    field, message = error_of(ev(**{"$insert_id": value}))
    assert field == "$insert_id"
    assert message == f"'$insert_id' is invalid: {value!r} is a placeholder, not an id"


def test_insert_id_must_be_a_string() -> None:
    assert error_of(ev(**{"$insert_id": 12})) == ("$insert_id", "'$insert_id' is invalid: must be a string")


def test_missing_insert_id_is_generated_and_unique() -> None:
    batch = validate_events([without("$insert_id"), without("$insert_id")], IMPORT)
    assert len(batch) == 2
    assert batch.insert_ids[0] != batch.insert_ids[1]
    assert json.loads(batch.properties[0])["$insert_id"] == batch.insert_ids[0]


# -- properties: limits, utf8, truncation ----------------------------------------------------------------


def test_fewer_than_255_properties() -> None:
    base = ev()["properties"]
    ok = {**base, **{f"p{i}": i for i in range(254 - len(base))}}
    assert len(ok) == 254
    assert len(one({"event": "e", "properties": ok})) == 1
    too_many = {**ok, "one_more": 1}
    assert error_of({"event": "e", "properties": too_many}) == (
        "properties",
        "'properties' is invalid: an event must have fewer than 255 properties",
    )


def test_arrays_must_have_fewer_than_255_elements() -> None:
    assert len(one(ev(items=list(range(254))))) == 1
    assert error_of(ev(items=list(range(255)))) == (
        "properties.items",
        "properties.items is invalid: arrays must have fewer than 255 elements",
    )


def test_nested_objects_must_have_fewer_than_255_keys() -> None:
    assert len(one(ev(obj={str(i): i for i in range(254)}))) == 1
    assert error_of(ev(obj={str(i): i for i in range(255)})) == (
        "properties.obj",
        "properties.obj is invalid: objects must have fewer than 255 keys",
    )


def test_nesting_depth_is_at_most_three() -> None:
    assert len(one(ev(deep={"a": {"b": {"c": 1}}}))) == 1
    assert len(one(ev(deep=[[[1]]]))) == 1
    assert error_of(ev(deep={"a": {"b": {"c": {"d": 1}}}})) == (
        "properties.deep",
        "properties.deep is invalid: max nesting depth is 3",
    )
    assert error_of(ev(deep=[[[[1]]]]))[0] == "properties.deep"


def test_invalid_utf8_names_the_property() -> None:
    assert error_of(ev(utm_source="bad \udcff byte")) == (
        "properties.utm_source",
        "properties.utm_source is invalid: string should be valid utf8",
    )


def test_invalid_utf8_inside_a_list_is_refused() -> None:
    assert error_of(ev(tags=["ok", "\ud800"]))[0] == "properties.tags"


def test_number_out_of_range_is_refused() -> None:
    assert error_of(ev(huge=OutOfRange("1e400"))) == (
        "properties.huge",
        "properties.huge is invalid: number 1e400 is out of range",
    )


def test_strings_and_names_are_truncated_to_255_characters() -> None:
    props = stored(ev(**{"long": "é" * 300, "k" * 300: "v", "nested": {"s": "z" * 256}, "list": ["y" * 999]}))
    assert props["long"] == "é" * 255
    assert props["k" * 255] == "v"
    assert props["nested"]["s"] == "z" * 255
    assert props["list"] == ["y" * 255]


def test_distinct_id_is_truncated_to_255_characters() -> None:
    assert one(ev(distinct_id="d" * 400)).distinct_ids == ["d" * 255]


def test_event_of_one_megabyte_is_refused() -> None:
    big = ev(blob=["x" * 255] * 200, **{f"p{i}": ["y" * 255] * 200 for i in range(20)})
    assert error_of(big) == ("event", "event is invalid: must be smaller than 1MB of uncompressed JSON")


# -- $ignore ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 1, "yes", "true"])
def test_ignore_drops_the_event_silently(value: Any) -> None:
    batch = one(ev(**{"$ignore": value}))
    assert len(batch) == 0 and batch.errors == [] and batch.ignored == 1


@pytest.mark.parametrize("value", [False, ""])
def test_ignore_false_or_empty_keeps_the_event(value: Any) -> None:
    assert len(one(ev(**{"$ignore": value}))) == 1


# -- what ingestion adds (§2.6) ------------------------------------------------------------------------


def test_import_adds_mixpanel_properties_and_drops_token() -> None:
    item = ev(token="tok", color="red")
    props = stored(item)
    assert props["$import"] is True
    assert props["$mp_api_endpoint"] == "api.example.test"
    assert props["$mp_api_timestamp_ms"] == NOW_MS
    assert props["mp_processing_time_ms"] == NOW_MS
    assert props["$mp_event_size"] == len(json.dumps(item, separators=(",", ":")))
    assert props["color"] == "red"
    assert "token" not in props and "time" not in props and "distinct_id" not in props
    assert one(item).tokens == ["tok"]


def test_track_does_not_add_import_flag() -> None:
    props = stored(ev(time=NOW_S), TRACK)
    assert "$import" not in props
    assert props["$mp_api_endpoint"] == "api.example.test"


def test_values_keep_their_json_types() -> None:
    props = stored(ev(i=2**70, f=1.0, neg=-0.5, b=False, n=None, s="ünï", l=[1, "a", None], o={"k": [True]}))
    assert props["i"] == 2**70 and isinstance(props["i"], int)
    assert props["f"] == 1.0 and isinstance(props["f"], float)
    assert props["neg"] == -0.5 and props["b"] is False and props["n"] is None
    assert props["s"] == "ünï" and props["l"] == [1, "a", None] and props["o"] == {"k": [True]}


# -- batches -----------------------------------------------------------------------------------------------


def test_valid_part_of_a_batch_is_kept_with_error_indexes() -> None:
    items = [ev(), ev(""), ev(), without("distinct_id"), ev()]
    batch = validate_events(items, IMPORT)
    assert batch.indexes == [0, 2, 4]
    assert [(e.index, e.field) for e in batch.errors] == [(1, "event"), (3, "properties.distinct_id")]


def test_parse_errors_become_record_errors() -> None:
    batch = validate_events([ev(), None, ev()], IMPORT, {1: "line 2 is not valid JSON"})
    assert batch.indexes == [0, 2]
    assert batch.errors[0].index == 1 and batch.errors[0].message == "line 2 is not valid JSON"


# --- the size bound the import tool passes ----------------------------------------------

_terse_numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1).map(str),
    st.builds(
        lambda sign, digit, mark, exponent: f"{sign}{digit}{mark}{exponent}",
        st.sampled_from(["", "-"]), st.integers(1, 9), st.sampled_from(["e", "E", "e+", "E-", "e-"]),
        st.integers(0, 300),
    ),
    st.builds(lambda whole, frac: f"{whole}.{frac}", st.integers(0, 99), st.integers(0, 99)),
)
_terse_strings = st.builds(json.dumps, st.text(max_size=20), ensure_ascii=st.booleans())
_terse_scalars = st.one_of(_terse_numbers, _terse_strings, st.sampled_from(["true", "false", "null"]))
_terse_values = st.recursive(
    _terse_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(_terse_strings, inner), max_size=5).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_terse_values)
def test_compact_size_bound_holds_for_the_tersest_json(value: str) -> None:
    """Re-encoding decoded JSON may lengthen it (1e5 is 100000.0), never past the bound."""
    text = value.encode()
    try:
        decoded = msgspec.json.decode(text)
    except msgspec.DecodeError:  # a number out of range: such events never take the fast path
        return
    assert len(msgspec.json.encode(decoded)) <= compact_size_bound([text])
    event = b'{"event":"E","properties":{"v":' + text + b"}}"
    assert len(msgspec.json.encode(msgspec.json.decode(event))) <= compact_size_bound([b"{}", event])
