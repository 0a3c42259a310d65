"""Profile update rules of spec §4.3 and §4.4, as pure functions: validation and application."""

from __future__ import annotations

from typing import Any

import pytest

from eventkeep.errors import RecordError
from eventkeep.ingest.payload import OutOfRange
from eventkeep.ingest.profiles import (
    USER_KIND,
    Endpoint,
    ProfileUpdate,
    apply_checked,
    apply_update,
    group_kind,
    validate_updates,
)

NOW_MS = 1_800_000_000_000  # 2027-01-15T08:00:00Z
NOW_TEXT = "2027-01-15T08:00:00"
TOKEN = "tok"


def user(op: str = "$set", value: Any = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"$token": TOKEN, "$distinct_id": "u1", op: {"a": 1} if value is None else value}
    item.update(extra)
    return item


def group(op: str = "$set", value: Any = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"$token": TOKEN, "$group_key": "company", "$group_id": "acme",
                            op: {"a": 1} if value is None else value}
    item.update(extra)
    return item


def valid(item: Any, endpoint: Endpoint = "engage") -> ProfileUpdate:
    result = validate_updates([item], endpoint, NOW_MS)
    assert result.errors == [], result.errors
    [update] = result.updates
    return update


def refusal(item: Any, endpoint: Endpoint = "engage") -> tuple[str, str]:
    result = validate_updates([item], endpoint, NOW_MS)
    assert result.updates == [], "expected the update to be refused"
    [error] = result.errors
    assert error.index == 0 and error.insert_id is None
    return error.field, error.message


# -- validation: identity ------------------------------------------------------------------


def test_a_user_set_becomes_a_profile_update() -> None:
    update = valid(user("$set", {"$email": "a@example.com"}, **{"$time": 1_799_999_000.5}))
    assert update == ProfileUpdate(
        index=0, token="tok", kind="user", profile_id="u1", operation="$set",
        value={"$email": "a@example.com"}, last_seen_ms=1_799_999_000_500,
    )


def test_a_group_update_is_keyed_by_group_key_and_id() -> None:
    update = valid(group("$set_once", {"plan": "pro"}), "groups")
    assert (update.kind, update.profile_id, update.operation) == ("group:company", "acme", "$set_once")
    assert update.kind == group_kind("company") and USER_KIND == "user"


def test_a_group_keyed_user_is_not_a_user() -> None:
    item = group()
    item["$group_key"] = "user"
    assert valid(item, "groups").kind != USER_KIND


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_or_empty_distinct_id(missing: Any) -> None:
    item = user()
    if missing is None:
        del item["$distinct_id"]
    else:
        item["$distinct_id"] = missing
    assert refusal(item) == ("$distinct_id", "$distinct_id, missing or empty")


def test_blank_distinct_id_is_empty() -> None:
    assert refusal(user(**{"$distinct_id": "   "})) == ("$distinct_id", "$distinct_id, missing or empty")


@pytest.mark.parametrize("bad", [["u1"], {"id": 1}, True])
def test_distinct_id_of_the_wrong_type(bad: Any) -> None:
    assert refusal(user(**{"$distinct_id": bad})) == (
        "$distinct_id", "$distinct_id, must be a string or a number"
    )


def test_numeric_ids_are_kept_as_their_json_text() -> None:
    assert valid(user(**{"$distinct_id": 42})).profile_id == "42"
    assert valid(group(**{"$group_id": 7}), "groups").profile_id == "7"


@pytest.mark.parametrize("placeholder", ["null", "Undefined", "0", "anonymous"])
def test_placeholder_distinct_ids_are_refused(placeholder: str) -> None:
    assert refusal(user(**{"$distinct_id": placeholder})) == (
        "$distinct_id", f"$distinct_id, {placeholder!r} is a placeholder, not a user id"
    )


def test_missing_group_key_and_group_id() -> None:
    item = group()
    del item["$group_key"]
    assert refusal(item, "groups") == ("$group_key", "$group_key, missing or empty")
    item = group(**{"$group_id": ""})
    assert refusal(item, "groups") == ("$group_id", "$group_id, missing or empty")
    assert refusal(group(**{"$group_key": 5}), "groups") == ("$group_key", "$group_key, must be a string")
    assert refusal(group(**{"$group_id": [1]}), "groups") == (
        "$group_id", "$group_id, must be a string or a number"
    )


def test_a_group_update_needs_no_distinct_id_and_a_user_update_no_group() -> None:
    assert valid(group(), "groups").profile_id == "acme"
    assert refusal(group(), "engage") == ("$distinct_id", "$distinct_id, missing or empty")


def test_token_is_carried_for_routing_not_checked_here() -> None:
    item = user()
    del item["$token"]
    assert valid(item).token is None
    assert valid(user(**{"$token": ""})).token is None
    assert valid(user(**{"$token": 12})).token is None


def test_not_an_object() -> None:
    assert refusal(["$set"]) == ("update", "update, must be a JSON object")


# -- validation: operations ----------------------------------------------------------------


def test_exactly_one_operation() -> None:
    item = user("$set", {"a": 1}, **{"$add": {"n": 1}})
    assert refusal(item) == (
        "update", "update, more than one operation ($set, $add): send one update per operation"
    )
    item = {"$token": TOKEN, "$distinct_id": "u1", "$sett": {"a": 1}}
    assert refusal(item) == (
        "update",
        "update, no operation: expected one of $set, $set_once, $add, $union, $append, $remove, "
        "$unset, $delete",
    )
    item = {"$token": TOKEN, "$group_key": "company", "$group_id": "acme"}
    assert refusal(item, "groups") == (
        "update",
        "update, no operation: expected one of $set, $set_once, $add, $union, $remove, $unset, $delete",
    )


def test_groups_refuse_append_and_accept_add() -> None:
    assert refusal(group("$append", {"tags": "x"}), "groups") == (
        "$append", "$append, not supported in group profiles"
    )
    assert valid(group("$add", {"seats": 3}), "groups").value == {"seats": 3}


@pytest.mark.parametrize("op", ["$set", "$set_once", "$add", "$union", "$append", "$remove"])
@pytest.mark.parametrize("bad", [["a"], "a", 1, None])
def test_object_operations_need_an_object(op: str, bad: Any) -> None:
    item = {"$token": TOKEN, "$distinct_id": "u1", op: bad}
    assert refusal(item) == (op, f"{op}, must be an object of property names to values")


@pytest.mark.parametrize("bad", ["1", True, None, [1], {"n": 1}, OutOfRange("1e400")])
def test_add_values_must_be_numbers(bad: Any) -> None:
    assert refusal(user("$add", {"visits": 1, "score": bad})) == ("$add", "$add, 'score' must be a number")


def test_add_accepts_integers_floats_and_negatives() -> None:
    assert valid(user("$add", {"a": 1, "b": -2.5, "c": 10**30})).value == {"a": 1, "b": -2.5, "c": 10**30}


@pytest.mark.parametrize("bad", ["x", [], [{"a": 1}], [None], [True], [["x"]], 3])
def test_union_values_must_be_non_empty_lists_of_strings_or_numbers(bad: Any) -> None:
    assert refusal(user("$union", {"tags": bad})) == (
        "$union", "$union, 'tags' must be a non-empty list of strings or numbers"
    )


@pytest.mark.parametrize("bad", [[], "name", {"name": 1}, [1], ["a", None]])
def test_unset_takes_a_non_empty_list_of_names(bad: Any) -> None:
    assert refusal(user("$unset", bad)) == ("$unset", "$unset, must be a non-empty list of property names")


@pytest.mark.parametrize("value", ["", None, {}, "anything"])
def test_delete_ignores_its_value(value: Any) -> None:
    update = valid({"$token": TOKEN, "$distinct_id": "u1", "$delete": value})
    assert (update.operation, update.value) == ("$delete", None)


def test_append_and_remove_take_any_values() -> None:
    assert valid(user("$append", {"tx": {"$amount": 5}})).value == {"tx": {"$amount": 5}}
    assert valid(user("$remove", {"tags": None})).value == {"tags": None}


def test_unstorable_values_are_refused() -> None:
    assert refusal(user("$set", {"n": OutOfRange("1e400")})) == (
        "$set", "$set, 'n' is invalid: number 1e400 is out of range"
    )
    assert refusal(user("$set", {"s": "bad\udcff"})) == ("$set", "$set, 's' is invalid: string should be valid utf8")
    assert refusal(user("$set", {"bad\udcff": 1})) == ("$set", "$set, property names should be valid utf8")


# -- validation: modifiers and limits ------------------------------------------------------


def test_time_is_seconds_or_milliseconds_and_defaults_to_arrival() -> None:
    assert valid(user(**{"$time": 1_700_000_000})).last_seen_ms == 1_700_000_000_000
    assert valid(user(**{"$time": 1_700_000_000_123})).last_seen_ms == 1_700_000_000_123
    assert valid(user()).last_seen_ms == NOW_MS


@pytest.mark.parametrize("bad", ["2024-01-01", True, [1]])
def test_time_must_be_a_number(bad: Any) -> None:
    assert refusal(user(**{"$time": bad})) == ("$time", "$time, must be a number of seconds since epoch")


@pytest.mark.parametrize("flag", [True, "true"])
def test_ignore_time_leaves_last_seen_alone(flag: Any) -> None:
    assert valid(user(**{"$ignore_time": flag, "$time": "not even checked"})).last_seen_ms is None
    assert valid(user(**{"$ignore_time": False})).last_seen_ms == NOW_MS


def test_other_modifiers_and_unknown_keys_are_accepted() -> None:
    item = user(**{"$ip": "0", "$ignore_alias": True, "$latitude": 37.77, "$longitude": -122.42,
                   "$device_id": "d1", "$user_id": "u1"})
    assert valid(item).value == {"a": 1}


def test_long_strings_names_and_ids_are_cut_to_255() -> None:
    long = "x" * 300
    update = valid(user("$set", {long: long, "nested": {"k": [long]}}, **{"$distinct_id": long}))
    assert update.profile_id == "x" * 255
    assert update.value == {"x" * 255: "x" * 255, "nested": {"k": ["x" * 255]}}
    assert valid(user("$unset", [long])).value == ["x" * 255]
    assert valid(user("$union", {"t": [long]})).value == {"t": ["x" * 255]}


def test_an_update_of_1mb_or_more_is_refused() -> None:
    big = {f"p{i}": "y" * 250 for i in range(4200)}
    assert refusal(user("$set", big)) == ("update", "update, must be smaller than 1MB of uncompressed JSON")


def test_each_error_names_its_position_and_the_rest_are_kept_in_order() -> None:
    items = [user("$set", {"a": 1}), user("$add", {"n": "x"}), "junk", user("$unset", ["a"]), user()]
    result = validate_updates(items, "engage", NOW_MS, {4: "line 5 is not valid JSON: oops"})
    assert [u.index for u in result.updates] == [0, 3]
    assert [u.operation for u in result.updates] == ["$set", "$unset"]
    assert result.errors == [
        RecordError(1, None, "$add", "$add, 'n' must be a number"),
        RecordError(2, None, "update", "update, must be a JSON object"),
        RecordError(4, None, "update", "line 5 is not valid JSON: oops"),
    ]


# -- apply_update: the documented semantics ------------------------------------------------


def upd(op: str, value: Any, last_seen_ms: int | None = None) -> ProfileUpdate:
    return ProfileUpdate(0, TOKEN, USER_KIND, "u1", op, value, last_seen_ms)


def test_set_creates_then_overwrites() -> None:
    created = apply_update(None, upd("$set", {"name": "Ann", "age": 30}))
    assert created == {"name": "Ann", "age": 30}
    assert apply_update(created, upd("$set", {"age": 31, "city": "Oslo"})) == {"name": "Ann", "age": 31, "city": "Oslo"}


def test_set_once_never_overwrites() -> None:
    assert apply_update(None, upd("$set_once", {"first": "x"})) == {"first": "x"}
    current = {"first": "x", "empty": None}
    assert apply_update(current, upd("$set_once", {"first": "y", "empty": 1, "new": 2})) == {
        "first": "x", "empty": None, "new": 2,
    }


def test_add_starts_from_zero_and_can_decrement() -> None:
    assert apply_update(None, upd("$add", {"visits": 1})) == {"visits": 1}
    current = {"visits": 1, "balance": 10, "score": 1.5, "nothing": None}
    assert apply_update(current, upd("$add", {"visits": 2, "balance": -3, "score": 1, "nothing": 4})) == {
        "visits": 3, "balance": 7, "score": 2.5, "nothing": 4,
    }


def test_add_to_a_non_number_is_skipped_for_that_property() -> None:
    current = {"name": "Ann", "flag": True, "n": 1}
    assert apply_update(current, upd("$add", {"name": 1, "flag": 1, "n": 1})) == {"name": "Ann", "flag": True, "n": 2}


def test_union_adds_each_value_once_and_creates_the_profile() -> None:
    assert apply_update(None, upd("$union", {"tags": ["a", "b", "a"]})) == {"tags": ["a", "b"]}
    current = {"tags": ["a", "a", 1]}
    assert apply_update(current, upd("$union", {"tags": ["b", "a", 1.0, "1"]})) == {"tags": ["a", "a", 1, "b", "1"]}
    assert apply_update({"tags": "a"}, upd("$union", {"tags": ["b"]})) == {"tags": "a"}


def test_union_does_not_confuse_true_with_one() -> None:
    assert apply_update({"v": [True]}, upd("$union", {"v": [1]})) == {"v": [True, 1]}


def test_append_assigns_a_one_element_list_then_appends() -> None:
    created = apply_update(None, upd("$append", {"items": "arm"}))
    assert created == {"items": ["arm"]}
    assert apply_update(created, upd("$append", {"items": "arm"})) == {"items": ["arm", "arm"]}
    assert apply_update({"items": "solo"}, upd("$append", {"items": "x"})) == {"items": "solo"}
    assert apply_update({}, upd("$append", {"tx": {"$amount": 5}})) == {"tx": [{"$amount": 5}]}


def test_remove_takes_the_value_out_of_the_list() -> None:
    current = {"items": ["arm", "leg", "arm"], "name": "Ann"}
    assert apply_update(current, upd("$remove", {"items": "arm", "name": "Ann", "gone": 1})) == {
        "items": ["leg"], "name": "Ann",
    }
    assert apply_update({"v": [1, True, "1"]}, upd("$remove", {"v": 1})) == {"v": [True, "1"]}


def test_remove_and_unset_on_a_missing_profile_create_nothing() -> None:
    assert apply_update(None, upd("$remove", {"items": "arm"}, NOW_MS)) is None
    assert apply_update(None, upd("$unset", ["a"], NOW_MS)) is None


def test_unset_removes_properties() -> None:
    assert apply_update({"a": 1, "b": 2}, upd("$unset", ["a", "missing"])) == {"b": 2}


def test_delete_deletes() -> None:
    assert apply_update({"a": 1}, upd("$delete", None)) is None
    assert apply_update(None, upd("$delete", None)) is None


def test_apply_never_mutates_the_current_profile() -> None:
    current = {"tags": ["a"], "n": 1}
    apply_update(current, upd("$union", {"tags": ["b"]}))
    apply_update(current, upd("$append", {"tags": "c"}))
    apply_update(current, upd("$add", {"n": 5}))
    apply_update(current, upd("$unset", ["n"]))
    assert current == {"tags": ["a"], "n": 1}


def test_last_seen_comes_from_time_unless_ignored() -> None:
    assert apply_update(None, upd("$set", {"a": 1}, NOW_MS)) == {"$last_seen": NOW_TEXT, "a": 1}
    assert apply_update({"$last_seen": "x"}, upd("$set", {"a": 1}, None)) == {"$last_seen": "x", "a": 1}
    # An explicit $set of $last_seen wins over the automatic one.
    assert apply_update(None, upd("$set", {"$last_seen": "2020-01-01T00:00:00"}, NOW_MS)) == {
        "$last_seen": "2020-01-01T00:00:00"
    }
    assert apply_update({"a": 1}, upd("$remove", {"a": 1}, NOW_MS)) == {"a": 1, "$last_seen": NOW_TEXT}


# -- profile limits (§4.4) -----------------------------------------------------------------


def test_more_than_2000_properties_is_refused_and_changes_nothing() -> None:
    current = {f"p{i}": i for i in range(1999)}
    result, error = apply_checked(current, upd("$set", {"one_more": 1}))
    assert error is None and result is not None and len(result) == 2000
    result, error = apply_checked(result, upd("$add", {"two_more": 1}))
    assert error == RecordError(0, None, "profile", "profile, must have at most 2000 properties")
    assert result is not None and len(result) == 2000 and "two_more" not in result


def test_list_properties_are_limited_to_256kb() -> None:
    current = {"tags": ["t" * 250 for _ in range(1035)]}  # just under 256 KB of JSON
    result, error = apply_checked(current, upd("$union", {"tags": ["u" * 250]}))
    assert error is None and result is not None
    result2, error = apply_checked(result, upd("$append", {"tags": "v" * 250}))
    assert result2 is result
    assert error == RecordError(
        0, None, "profile", "$append, 'tags' is too large: list and object properties must be at most 256KB"
    )
