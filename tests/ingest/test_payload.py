"""Every request shape Mixpanel's clients send decodes to the same events (spec §2.1, §2.8, §3.1)."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import pytest

from eventkeep.errors import ApiError
from eventkeep.ingest.payload import OutOfRange, decode_data_param, decode_json, parse_body

EVENTS = [{"event": "a", "properties": {"x": 1}}, {"event": "b+/=", "properties": {"y": "é?"}}]
TEXT = json.dumps(EVENTS)


def b64(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def test_json_array_body() -> None:
    payload = parse_body(TEXT.encode(), "application/json", {})
    assert payload.items == EVENTS and payload.encoding == "json"


def test_ndjson_body() -> None:
    body = "\n".join(json.dumps(e) for e in EVENTS).encode() + b"\n"
    payload = parse_body(body, "application/x-ndjson", {})
    assert payload.items == EVENTS and payload.encoding == "ndjson" and payload.line_errors == {}


def test_ndjson_keeps_good_lines_and_notes_bad_ones() -> None:
    body = b'{"event":"a"}\n{not json\n{"event":"c"}\n'
    payload = parse_body(body, "application/x-ndjson", {})
    assert payload.items[0] == {"event": "a"} and payload.items[2] == {"event": "c"}
    assert list(payload.line_errors) == [1]
    assert payload.line_errors[1].startswith("line 2 is not valid JSON")


def test_single_pretty_printed_object_is_one_event() -> None:
    body = json.dumps(EVENTS[0], indent=2).encode()
    assert parse_body(body, "application/json", {}).items == [EVENTS[0]]


def test_form_with_json_data() -> None:
    body = ("data=" + quote(TEXT) + "&verbose=1&ip=0").encode()
    payload = parse_body(body, "application/x-www-form-urlencoded", {})
    assert payload.items == EVENTS and payload.encoding == "form"
    assert payload.params["verbose"] == "1"


def test_form_with_single_object() -> None:
    body = ("data=" + quote(json.dumps(EVENTS[0]))).encode()
    assert parse_body(body, "application/x-www-form-urlencoded", {}).items == [EVENTS[0]]


def test_form_with_base64_unescaped_plus_read_as_space() -> None:
    encoded = b64(EVENTS)
    # mixpanel-node posts base64 without URL-escaping: '+' arrives as a space.
    body = ("data=" + encoded).encode()
    assert parse_body(body, "application/x-www-form-urlencoded", {}).items == EVENTS


def test_base64_with_plus_signs_survives_unescaped_form_posting() -> None:
    value = [{"event": ">>>???", "properties": {"k": "~~~>>>"}}]
    encoded = b64(value)
    assert "+" in encoded
    body = ("data=" + encoded).encode()
    assert parse_body(body, "application/x-www-form-urlencoded", {}).items == value


def test_unpadded_base64_is_accepted() -> None:
    encoded = b64(EVENTS[0]).rstrip("=")
    assert decode_data_param(encoded) == EVENTS[0]


def test_get_query_data() -> None:
    payload = parse_body(b"", "", {"data": b64(EVENTS[0]), "ip": "1"})
    assert payload.items == [EVENTS[0]] and payload.encoding == "form" and payload.params["ip"] == "1"


def test_form_without_content_type_is_detected() -> None:
    assert parse_body(("data=" + b64(EVENTS)).encode(), "", {}).items == EVENTS


def test_garbage_data_is_a_400() -> None:
    with pytest.raises(ApiError) as info:
        decode_data_param("%%%not base64%%%")
    assert info.value.status == 400


def test_broken_json_array_is_a_400() -> None:
    with pytest.raises(ApiError) as info:
        parse_body(b'[{"event": "a"', "application/json", {})
    assert info.value.status == 400
    assert info.value.message.startswith("unable to parse request body as JSON")


def test_empty_body_is_a_400() -> None:
    with pytest.raises(ApiError) as info:
        parse_body(b"  ", "application/json", {})
    assert info.value.status == 400


def test_json_scalar_body_is_a_400() -> None:
    with pytest.raises(ApiError):
        parse_body(b"42", "application/json", {})


def test_big_integers_stay_exact() -> None:
    assert decode_json(b"[123456789012345678901234567890]") == [123456789012345678901234567890]


def test_invalid_utf8_and_lone_surrogates_survive_as_surrogates() -> None:
    value = decode_json(b'{"a": "\xff", "b": "\\ud800"}')
    assert value["a"] == "\udcff" and value["b"] == "\ud800"


def test_out_of_range_numbers_are_marked() -> None:
    value = decode_json(b'{"a": 1e400, "b": 2}')
    assert isinstance(value["a"], OutOfRange) and value["b"] == 2
