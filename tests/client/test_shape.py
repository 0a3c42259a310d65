"""Shaping records into events: time parsing, flat rows, deterministic insert ids."""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pytest

from eventkeep.client.shape import ShapeOptions, Shaper, insert_id_for
from eventkeep.client.sources import Chunk
from eventkeep.ingest.validate import _INSERT_ID_RE, IngestContext, validate_events

T = 1710072000  # 2024-03-10T12:00:00Z


@pytest.mark.parametrize("value,expected", [
    (T, T),
    (T * 1000, T * 1000),
    (str(T), T),
    ("1710072000.5", 1710072000.5),
    ("2024-03-10T12:00:00Z", T * 1000),
    ("2024-03-10T12:00:00.250+00:00", T * 1000 + 250),
    ("2024-03-10T14:00:00+02:00", T * 1000),
    ("2024-03-10 12:00:00", T * 1000),  # naive: in --time-zone (UTC here)
    (dt.datetime(2024, 3, 10, 12, tzinfo=dt.UTC), T * 1000),
    (dt.date(2024, 3, 10), (T - 12 * 3600) * 1000),
    (decimal.Decimal("1710072000"), T),
    ("next tuesday", "next tuesday"),  # unreadable: left for the validator to refuse
    (True, True),
])
def test_time_values(value: Any, expected: Any) -> None:
    assert Shaper(ShapeOptions()).parse_time(value) == expected


def test_naive_times_use_the_time_zone_with_its_dst_rules() -> None:
    shaper = Shaper(ShapeOptions(time_zone="Europe/Paris"))
    assert shaper.parse_time("2024-01-15 12:00:00") == int(dt.datetime(2024, 1, 15, 11, tzinfo=dt.UTC).timestamp() * 1000)
    assert shaper.parse_time("2024-07-15 12:00:00") == int(dt.datetime(2024, 7, 15, 10, tzinfo=dt.UTC).timestamp() * 1000)
    assert shaper.parse_time("2024-07-15T12:00:00Z") == int(dt.datetime(2024, 7, 15, 12, tzinfo=dt.UTC).timestamp() * 1000)
    with pytest.raises(ValueError, match="unknown time zone"):
        Shaper(ShapeOptions(time_zone="Mars/Base"))


def test_time_units_force_the_reading_of_numbers() -> None:
    assert Shaper(ShapeOptions(time_unit="s")).parse_time(T) == T * 1000
    assert Shaper(ShapeOptions(time_unit="ms")).parse_time(str(T * 1000)) == T * 1000
    assert Shaper(ShapeOptions(time_unit="auto")).parse_time(T) == T


def test_flat_rows_map_columns_and_keep_the_rest_as_properties() -> None:
    shaper = Shaper(ShapeOptions(event_column="action", distinct_id_column="user", time_column="ts",
                                 insert_id_column="id", infer_types=True))
    event = shaper.flat_to_event({"action": "Buy", "user": "u1", "ts": "2024-03-10T12:00:00Z", "id": 17,
                                  "price": "9.5", "qty": "2", "zip": "007", "ok": "true", "properties": '{"a": 1}'})
    assert event == {"event": "Buy", "properties": {
        "time": T * 1000, "distinct_id": "u1", "$insert_id": "17", "a": 1, "price": 9.5, "qty": 2, "zip": "007",
        "ok": True}}
    plain = Shaper(ShapeOptions()).flat_to_event({"event": "E", "n": "2", "gone": None}, drop_nulls=True)
    assert plain["properties"]["n"] == "2" and "gone" not in plain["properties"]


def test_generated_insert_ids_are_deterministic_valid_and_content_sensitive() -> None:
    a = {"event": "E", "properties": {"time": T, "distinct_id": "u", "x": [1, {"b": 2, "a": 1}]}}
    reordered = {"properties": {"x": [1, {"a": 1, "b": 2}], "distinct_id": "u", "time": T}, "event": "E"}
    assert insert_id_for(a) == insert_id_for(reordered)
    assert _INSERT_ID_RE.fullmatch(insert_id_for(a)) and len(insert_id_for(a)) == 32
    for changed in ({**a, "event": "F"}, {"event": "E", "properties": {**a["properties"], "time": T + 1}},  # type: ignore[dict-item]
                    {"event": "E", "properties": {**a["properties"], "distinct_id": "v"}},  # type: ignore[dict-item]
                    {"event": "E", "properties": {**a["properties"], "x": [1]}}):  # type: ignore[dict-item]
        assert insert_id_for(changed) != insert_id_for(a)


def test_shaping_keeps_original_bytes_when_nothing_changes() -> None:
    raws = [b'{"event":"E","properties":{"time":1,"distinct_id":"u","$insert_id":"keep"}}',
            b'{"event":"E","properties":{"time":1,"distinct_id":"u"}}',
            b'{"event":"E","time":1,"distinct_id":"u"}',
            b'{broken']
    shaped = Shaper(ShapeOptions()).shape(Chunk(0, 4, [0, 1, 2, 3], raws=raws))
    assert shaped.lines[0] is raws[0]
    assert shaped.lines[1] is None and shaped.items[1]["properties"]["$insert_id"]
    assert shaped.items[2] == {"event": "E", "properties": {"time": 1, "distinct_id": "u",
                                                            "$insert_id": shaped.items[2]["properties"]["$insert_id"]}}
    assert set(shaped.parse_errors) == {3} and shaped.parse_errors[3].startswith("line 4 is not valid JSON")
    checked = validate_events(shaped.items, IngestContext("import", T * 1000), shaped.parse_errors)
    assert [e.index for e in checked.errors] == [0, 1, 2, 3]  # time 1 is before 1971; 3 is not JSON


def test_in_memory_events_are_not_modified() -> None:
    event = {"event": "E", "properties": {"time": T, "distinct_id": "u"}}
    shaped = Shaper(ShapeOptions()).shape(Chunk(0, 1, [0], rows=[event]))
    assert "$insert_id" not in event["properties"]
    assert "$insert_id" in shaped.items[0]["properties"]
