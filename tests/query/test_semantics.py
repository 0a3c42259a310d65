"""Every rule and example of where-language.md, against the evaluator and the DuckDB SQL.

Each case states the value the spec gives, written out by hand. `outcome` checks that the
reference evaluator and the compiled SQL (its typed value read back, and the events its WHERE
selects) both produce it. Operands mostly come from event properties, so the SQL does the work
at run time rather than receiving a constant folded in Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from eventkeep.query import parse_where
from eventkeep.query.evaluate import evaluate, matches
from tests.query.harness import EventTable, event, typed

U = ("undefined",)
NULL = ("null",)
TRUE = ("boolean", True)
FALSE = ("boolean", False)


def S(text: str) -> tuple[str, str]:
    return ("string", text)


def N(number: float) -> tuple[str, float]:
    return ("number", float(number))


def DT(iso: str) -> tuple[str, int]:
    instant = datetime.fromisoformat(iso).replace(tzinfo=UTC)
    return ("datetime", (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1))


# One event with a property of every kind. Its time is 2024-01-01T00:00:00.5Z.
PROPS: dict[str, Any] = {
    "s": "Linux",
    "empty": "",
    "false_text": "false",
    "zero_text": "0",
    "num_text": " 12 ",
    "hello": "hello world",
    "n": 3,
    "f": 1.5,
    "neg": -2.5,
    "zero": 0,
    "b": True,
    "no": False,
    "z": None,
    "l": [1, "x", [2, 3]],
    "nulls": [None],
    "empty_list": [],
    "o": {"k": 1, "j": [1, "a"]},
    "o_reordered": {"j": [1.0, "a"], "k": 1.0},
    "o_null": {"k": None},
    "empty_object": {},
    "big": 2**64 + 1,
    "huge": 10**30,
    "date": "2024-01-01",
    "stamp": "2024-01-01T00:00:00",
    "My Prop": "spaced",
    'q"uote': "quoted",
    "back\\slash": "slashed",
    "dot.ted": "dotted",
    "br[0]": "bracketed",
    "sl/ash~0": "pointer",
    "$os": "Linux",
    "$browser": "Chrome",
    "$email": "ann@example.com",
    "$referring_domain": "www.facebook.com",
    "account_id": 3,
    "deep": [[[1, "a"]], {"k": [1]}],  # containers three levels deep, the most ingestion takes
    "deep_item": [[1, "a"]],
    "neg_zero_list": [-0.0],
    "zero_list": [0],
    "é名": "unicode",
}
EVENT = event("Signed up", 1_704_067_200_500, "u1", **PROPS)


@pytest.fixture(scope="module")
def table() -> Iterator[EventTable]:
    table = EventTable()
    yield table
    table.con.close()


def outcome(table: EventTable, text: str, ev: dict[str, Any] = EVENT) -> Any:
    """The typed value of `text` for `ev`, after checking that the evaluator and the SQL
    (value and WHERE) agree on it."""
    expr = parse_where(text)
    value = typed(evaluate(expr, ev))
    table.clear()
    table.insert([ev])
    assert table.values([expr]) == [[value]], f"SQL value of {text}"
    matched = matches(expr, ev)
    assert table.selected(expr) == ([0] if matched else []), f"SQL WHERE of {text}"
    return value


def check(table: EventTable, text: str, expected: Any) -> None:
    assert outcome(table, text) == expected, text


# -- the documented examples -----------------------------------------------------------------

EXAMPLES = [
    ('properties["$os"] == "Linux"', {"$os": "Linux"}, True),
    ('properties["$os"] == "Linux"', {"$os": "linux"}, False),
    ('properties["$os"]=="Linux"', {"$os": "Linux"}, True),
    ('properties["account_id"] in [1,2,3,4]', {"account_id": 4}, True),
    ('properties["account_id"] in [1,2,3,4]', {"account_id": 5}, False),
    ('properties["account_id"] in [1,2,3,4]', {"account_id": "4"}, False),
    ('defined(properties["My Prop"])', {"My Prop": 0}, True),
    ('defined(properties["My Prop"])', {"My Prop": None}, False),
    ('defined(properties["My Prop"])', {}, False),
    ('not defined(properties["city"])', {}, True),
    ('not defined(properties["city"])', {"city": "Paris"}, False),
    ('("Facebook" in properties["$referring_domain"])', {"$referring_domain": "m.Facebook.com"}, True),
    ('("Facebook" in properties["$referring_domain"])', {"$referring_domain": "facebook.com"}, False),
    ('("Facebook" in properties["$referring_domain"])', {}, False),
    ('(not "Facebook" in properties["$referring_domain"])', {"$referring_domain": "x.Facebook"}, False),
    ('(not "Facebook" in properties["$referring_domain"])', {"$referring_domain": "google.com"}, True),
    ('(not "Facebook" in properties["$referring_domain"])', {}, True),
    ('(properties["$browser"] == "Chrome" and not "" in properties["$email"])', {"$browser": "Chrome", "$email": "a@b"}, False),
    ('(properties["$browser"] == "Chrome" and not "" in properties["$email"])', {"$browser": "Chrome"}, True),
    ('(properties["$browser"] == "Chrome" and not "" in properties["$email"])', {"$browser": "Safari"}, False),
    ('(properties["$city"] != "Chicago")', {}, True),
    ('(defined (properties["$device"]))', {"$device": "iPhone"}, True),
    ('has_prefix(string(user["signup_date"]), "2016")', {}, False),
    ('user["$email"] == "allison@example.com"', {}, False),
    ('properties["country"] == "US" and user["age"] > 30', {"country": "US"}, False),
]


@pytest.mark.parametrize(("text", "props", "matched"), EXAMPLES)
def test_documented_examples(table: EventTable, text: str, props: dict[str, Any], matched: bool) -> None:
    ev = event(**props)
    outcome(table, text, ev)
    assert matches(parse_where(text), ev) is matched


@pytest.mark.parametrize(
    ("time_ms", "matched"),
    [(1_704_067_200_000, True), (1_704_067_199_999, False), (1_800_000_000_000, True)],
)
def test_time_example(table: EventTable, time_ms: int, matched: bool) -> None:
    text = 'event["$time"] >= datetime("2024-01-01T00:00:00")'
    assert outcome(table, text, event(time_ms=time_ms)) == ("boolean", matched)


# -- values, literals and accessors ----------------------------------------------------------

VALUES = [
    # literals
    ("12", N(12)),
    ("1.5", N(1.5)),
    (".5", N(0.5)),
    ("1e3", N(1000)),
    ("2.5E-1", N(0.25)),
    ('"double"', S("double")),
    ("'single'", S("single")),
    (r'"a\"b"', S('a"b')),
    (r"'it\'s'", S("it's")),
    (r'"back\\slash"', S("back\\slash")),
    (r'"line\nnext\ttab"', S("line\nnext\ttab")),
    ('"unicode é 名"', S("unicode é 名")),
    ("true", TRUE),
    ("false", FALSE),
    ("null", NULL),
    ('[1, "a", [true, null]]', ("list", [N(1), S("a"), ("list", [TRUE, NULL])])),
    ("[-1, -0.5]", ("list", [N(-1), N(-0.5)])),
    ("[]", ("list", [])),
    # accessors
    ('properties["s"]', S("Linux")),
    ('properties["n"]', N(3)),
    ('properties["z"]', NULL),
    ('properties["missing"]', U),
    ('properties["l"]', ("list", [N(1), S("x"), ("list", [N(2), N(3)])])),
    ('properties["o"]', ("object", {"k": N(1), "j": ("list", [N(1), S("a")])})),
    ('properties["big"]', N(2**64 + 1)),
    ('properties["huge"]', N(10**30)),
    ('properties["My Prop"]', S("spaced")),
    (r'properties["q\"uote"]', S("quoted")),
    ("properties['q\"uote']", S("quoted")),
    (r'properties["back\\slash"]', S("slashed")),
    ('properties["dot.ted"]', S("dotted")),
    ('properties["br[0]"]', S("bracketed")),
    ('properties["sl/ash~0"]', S("pointer")),
    ('properties["é名"]', S("unicode")),
    ('properties["time"]', N(1_704_067_200.5)),
    ('properties["distinct_id"]', S("u1")),
    ('event["$event_name"]', S("Signed up")),
    ('event["$time"]', DT("2024-01-01T00:00:00.500")),
    ('user["$email"]', U),
    # numbers are 64-bit floats: 2**64 + 1 is 2**64
    ('properties["big"] == 18446744073709551616', TRUE),
    ('properties["big"] > 18446744073709551615', FALSE),
    ('properties["huge"] == 1e30', TRUE),
    # booleans are never numbers
    ("true == 1", FALSE),
    ('properties["b"] == 1', FALSE),
    ('properties["no"] == 0', FALSE),
    ('properties["b"] == true', TRUE),
]


@pytest.mark.parametrize(("text", "expected"), VALUES)
def test_values(table: EventTable, text: str, expected: Any) -> None:
    check(table, text, expected)


# -- precedence and associativity ------------------------------------------------------------

PRECEDENCE = [
    ('not "Facebook" in properties["hello"]', TRUE),  # not ("Facebook" in …)
    ('not "hello" in properties["hello"]', FALSE),
    ('1 + properties["n"] * 2 == 7', TRUE),
    ('(1 + properties["n"]) * 2 == 8', TRUE),
    ('properties["n"] - 1 - 1 == 1', TRUE),  # (3 - 1) - 1
    ('12 / properties["n"] / 2 == 2', TRUE),  # (12 / 3) / 2
    ('7 % properties["n"] * 2 == 2', TRUE),  # (7 % 3) * 2
    ('-properties["n"] * 2 == -6', TRUE),
    ('- 2 + properties["n"] == 1', TRUE),  # (-2) + 3
    ('--properties["n"] == 3', TRUE),
    ('properties["b"] or properties["no"] and properties["no"]', TRUE),  # b or (no and no)
    ('not properties["b"] or properties["b"]', TRUE),  # (not b) or b
    ('not properties["n"] == 2', TRUE),  # not (3 == 2)
    ('not not properties["b"]', TRUE),
    ('properties["n"] < 4 == true', TRUE),  # (3 < 4) == true
    ('properties["n"] == 3 == true', TRUE),  # (3 == 3) == true
    ('"ell" + "o" in properties["hello"]', TRUE),  # ("ell" + "o") in …
    ('properties["n"] + 1 > 3 and properties["n"] - 1 < 3', TRUE),
    ("properties[\"n\"]==3and properties[\"f\"]>1", TRUE),
]


@pytest.mark.parametrize(("text", "expected"), PRECEDENCE)
def test_precedence(table: EventTable, text: str, expected: Any) -> None:
    check(table, text, expected)


# -- operators -------------------------------------------------------------------------------

OPERATORS = [
    # == : same type, defined, non-null, equal
    ('properties["n"] == 3', TRUE),
    ('properties["n"] == 3.0', TRUE),
    ('properties["n"] == "3"', FALSE),
    ('properties["zero_text"] == 0', FALSE),
    ('properties["s"] == "Linux"', TRUE),
    ('properties["s"] == "linux"', FALSE),
    ('properties["missing"] == properties["other"]', FALSE),
    ('properties["z"] == null', FALSE),
    ('properties["z"] == properties["z"]', FALSE),
    ("null == null", FALSE),
    ('properties["l"] == [1, "x", [2, 3]]', TRUE),
    ('properties["l"] == [1.0, "x", [2, 3.0]]', TRUE),
    ('properties["l"] == ["x", 1, [2, 3]]', FALSE),
    ('properties["l"] == [1, "x", [3, 2]]', FALSE),
    ('properties["l"] == [1, "x"]', FALSE),
    ('properties["l"] == properties["l"]', TRUE),
    ('properties["nulls"] == [null]', FALSE),
    ('properties["nulls"] == properties["nulls"]', FALSE),
    ('properties["empty_list"] == []', TRUE),
    ('properties["neg_zero_list"] == properties["zero_list"]', TRUE),
    ('properties["neg_zero_list"] == [0]', TRUE),
    ('properties["o"] == properties["o_reordered"]', TRUE),
    ('properties["o"] == properties["empty_object"]', FALSE),
    ('properties["o_null"] == properties["o_null"]', FALSE),
    ('properties["empty_object"] == properties["empty_object"]', TRUE),
    ('properties["l"] == properties["o"]', FALSE),
    ('event["$time"] == datetime("2024-01-01T00:00:00.5")', TRUE),
    ('event["$time"] == datetime("2024-01-01")', FALSE),
    # != is not ==
    ('properties["missing"] != "x"', TRUE),
    ('properties["z"] != null', TRUE),
    ('properties["s"] != "Linux"', FALSE),
    ('properties["s"] != "x"', TRUE),
    ('properties["n"] != "3"', TRUE),
    # > >= < <= : two numbers or two datetimes, else undefined
    ('properties["n"] > 2', TRUE),
    ('properties["n"] >= 3', TRUE),
    ('properties["n"] < 3', FALSE),
    ('properties["neg"] <= -2.5', TRUE),
    ('properties["s"] > "A"', U),
    ('properties["n"] > "2"', U),
    ('properties["b"] > false', U),
    ('properties["missing"] < 1', U),
    ('event["$time"] > datetime("2023-12-31T23:59:59")', TRUE),
    ('event["$time"] < datetime("2024-01-01T00:00:01")', TRUE),
    ('event["$time"] > 0', U),
    # in : substring, list membership, else undefined
    ('"world" in properties["hello"]', TRUE),
    ('"World" in properties["hello"]', FALSE),
    ('"" in properties["empty"]', TRUE),
    ('properties["hello"] in "hello world!"', TRUE),
    ('"x" in properties["l"]', TRUE),
    ('1 in properties["l"]', TRUE),
    ('"1" in properties["l"]', FALSE),
    ('2 in properties["l"]', FALSE),
    ("[2, 3] in properties[\"l\"]", TRUE),
    ('properties["n"] in [1, 2, 3]', TRUE),
    ('properties["n"] in ["3"]', FALSE),
    ('properties["s"] in ["Mac", "Linux"]', TRUE),
    ('properties["b"] in [1, true]', TRUE),
    ('properties["l"] in [[1, "x", [2, 3]]]', TRUE),
    ('properties["z"] in [null]', FALSE),
    ('properties["missing"] in [1]', FALSE),
    ('null in properties["nulls"]', FALSE),
    ('properties["n"] in properties["empty_list"]', FALSE),
    ('[[1, "a"]] in properties["deep"]', TRUE),
    ('properties["deep_item"] in properties["deep"]', TRUE),
    ('[[1, "b"]] in properties["deep"]', FALSE),
    ('properties["deep"] == [[[1, "a"]], 2]', FALSE),
    ('properties["deep"] == properties["deep"]', TRUE),
    ('1 in properties["zero_text"]', U),
    ('"a" in properties["n"]', U),
    ('"a" in properties["z"]', U),
    ('"k" in properties["o"]', U),
    ('(1 in properties["n"]) == false', FALSE),
    # + : numbers add, strings concatenate, else undefined
    ('properties["n"] + 2', N(5)),
    ('properties["s"] + "!"', S("Linux!")),
    ('properties["s"] + 1', U),
    ('properties["n"] + "1"', U),
    ('properties["b"] + 1', U),
    ('properties["l"] + [1]', U),
    ('properties["huge"] * 1e300', U),  # beyond 64-bit floats: no number, so undefined
    ('properties["n"] * 1e308 + 1e308', U),
    # - * / % : numbers only; / and % by 0 undefined; remainder has the dividend's sign
    ('properties["n"] - 5', N(-2)),
    ('properties["f"] * properties["neg"]', N(-3.75)),
    ('properties["n"] / 2', N(1.5)),
    ('properties["n"] / properties["zero"]', U),
    ('properties["n"] % properties["zero"]', U),
    ('-7 % properties["n"]', N(-1)),
    ('7 % -properties["n"]', N(1)),
    ('properties["neg"] % 2', N(-0.5)),
    ('5.5 % properties["f"]', N(1)),
    ('properties["num_text"] * 2', U),
    ('properties["s"] - "x"', U),
    # unary minus: numbers only
    ('-properties["n"]', N(-3)),
    ('-properties["s"]', U),
    ('-properties["missing"]', U),
    # and, or: operands taken as boolean(); the result is a boolean
    ('properties["n"] and properties["s"]', TRUE),
    ('properties["zero"] or properties["empty"]', FALSE),
    ('properties["missing"] or properties["l"]', TRUE),
    ('properties["n"] and properties["z"]', FALSE),
    # not: booleans negate; undefined and null give true; anything else is undefined
    ('not properties["b"]', FALSE),
    ('not properties["no"]', TRUE),
    ('not properties["missing"]', TRUE),
    ('not properties["z"]', TRUE),
    ('not properties["zero"]', U),
    ('not properties["false_text"]', U),
    ('not properties["l"]', U),
    ('defined(not properties["n"])', FALSE),
]


@pytest.mark.parametrize(("text", "expected"), OPERATORS)
def test_operators(table: EventTable, text: str, expected: Any) -> None:
    check(table, text, expected)


# -- functions -------------------------------------------------------------------------------

FUNCTIONS = [
    # defined: false for undefined and null only
    ('defined(properties["missing"])', FALSE),
    ('defined(properties["z"])', FALSE),
    ('defined(properties["no"])', TRUE),
    ('defined(properties["zero"])', TRUE),
    ('defined(properties["empty"])', TRUE),
    ('defined(properties["empty_list"])', TRUE),
    ('defined(user["x"])', FALSE),
    # boolean
    ('boolean(properties["no"])', FALSE),
    ('boolean(properties["zero"])', FALSE),
    ('boolean(properties["empty"])', FALSE),
    ('boolean(properties["false_text"])', FALSE),
    ('boolean(properties["z"])', FALSE),
    ('boolean(properties["missing"])', FALSE),
    ('boolean(properties["empty_list"])', FALSE),
    ('boolean(properties["b"])', TRUE),
    ('boolean(properties["neg"])', TRUE),
    ('boolean(properties["zero_text"])', TRUE),
    ('boolean(properties["s"])', TRUE),
    ('boolean(properties["nulls"])', TRUE),
    ('boolean(properties["empty_object"])', TRUE),
    ('boolean(event["$time"])', TRUE),
    # number
    ('number(properties["n"])', N(3)),
    ('number(properties["num_text"])', N(12)),
    ('number(properties["zero_text"])', N(0)),
    ('number(properties["b"])', N(1)),
    ('number(properties["no"])', N(0)),
    ('number(properties["s"])', U),
    ('number(properties["empty"])', U),
    ('number(properties["z"])', U),
    ('number(properties["l"])', U),
    ('number(properties["missing"])', U),
    ('number(event["$time"])', U),
    ('number(" -1.5e2 ")', N(-150)),
    ('number(properties["s"] + "1")', U),
    # string
    ('string(properties["n"])', S("3")),
    ('string(properties["f"])', S("1.5")),
    ('string(properties["neg"])', S("-2.5")),
    ('string(properties["zero"])', S("0")),
    ('string(properties["big"])', S("18446744073709552000")),
    ('string(properties["huge"])', S("1e+30")),
    ('string(properties["b"])', S("true")),
    ('string(properties["no"])', S("false")),
    ('string(properties["s"])', S("Linux")),
    ('string(properties["z"])', NULL),
    ('string(properties["missing"])', U),
    ('string(properties["l"])', U),
    ('string(properties["o"])', U),
    ('string(event["$time"])', U),
    ('string(properties["n"] / 4)', S("0.75")),
    ('string(properties["n"] * 1e20)', S("300000000000000000000")),
    ('string(properties["n"] * 1e21)', S("3e+21")),
    ('string(properties["n"] / 1e6)', S("0.000003")),
    ('string(properties["n"] / 1e7)', S("3e-7")),
    ('string(-properties["zero"])', S("0")),
    ('string(properties["n"] / 3)', S("1")),
    ('string(properties["f"] / 3)', S("0.5")),
    ('string(1 / properties["n"])', S("0.3333333333333333")),
    # floor, ceil, round
    ('floor(properties["neg"])', N(-3)),
    ('ceil(properties["neg"])', N(-2)),
    ('round(properties["neg"])', N(-3)),
    ('round(-properties["neg"])', N(3)),
    ('round(properties["f"])', N(2)),
    ('round(properties["f"] - 0.1)', N(1)),
    ('round(properties["n"] / 6 - 0.00000000000000006)', N(0)),  # 0.49999999999999994
    ('floor(properties["f"])', N(1)),
    ('ceil(properties["f"])', N(2)),
    ('floor(properties["num_text"])', U),
    ('round(properties["b"])', U),
    # datetime
    ('datetime(properties["date"])', DT("2024-01-01T00:00:00")),
    ('datetime(properties["stamp"])', DT("2024-01-01T00:00:00")),
    ('datetime(properties["stamp"] + "Z")', DT("2024-01-01T00:00:00")),
    ('datetime(properties["date"] + "T23:59:59.25")', DT("2024-01-01T23:59:59.250")),
    ('datetime("2024-02-29T12:00:00")', DT("2024-02-29T12:00:00")),
    ('datetime(properties["s"])', U),
    ('datetime(properties["n"])', U),
    ('datetime(properties["date"] + "T24:00:00")', U),
    ('datetime(properties["date"] + " 00:00:00")', U),
    ('datetime("2023-02-29")', U),
    ('datetime("2024-1-1")', U),
    ('datetime(event["$time"])', U),
    # has_prefix
    ('has_prefix(properties["s"], "Lin")', TRUE),
    ('has_prefix(properties["s"], "lin")', FALSE),
    ('has_prefix(properties["s"], "")', TRUE),
    ('has_prefix(properties["n"], "3")', U),
    ('has_prefix(properties["s"], properties["missing"])', U),
    ('has_prefix(string(properties["n"]), "3")', TRUE),
]


@pytest.mark.parametrize(("text", "expected"), FUNCTIONS)
def test_functions(table: EventTable, text: str, expected: Any) -> None:
    check(table, text, expected)


# -- matching: an event matches when boolean(result) is true ----------------------------------

MATCHING = [
    ('properties["s"]', True),
    ('properties["empty"]', False),
    ('properties["false_text"]', False),
    ('properties["zero_text"]', True),
    ('properties["n"]', True),
    ('properties["zero"]', False),
    ('properties["l"]', True),
    ('properties["empty_list"]', False),
    ('properties["o"]', True),
    ('properties["z"]', False),
    ('properties["missing"]', False),
    ('properties["n"] > "2"', False),
    ('event["$time"]', True),
    ('1 / 0', False),
    ("true", True),
    ('"false"', False),
]


@pytest.mark.parametrize(("text", "matched"), MATCHING)
def test_matching(table: EventTable, text: str, matched: bool) -> None:
    outcome(table, text)
    assert matches(parse_where(text), EVENT) is matched


def test_filter_selects_exactly_the_matching_events(table: EventTable) -> None:
    events = [
        event(os="Linux", n=1),
        event(os="Mac", n=2),
        event(n=3),
        event(os=None, n="4"),
        event(os=["Linux"], n=5),
    ]
    table.clear()
    table.insert(events)
    assert table.selected(parse_where('properties["os"] == "Linux"')) == [0]
    assert table.selected(parse_where('properties["os"] != "Linux"')) == [1, 2, 3, 4]
    assert table.selected(parse_where('not defined(properties["os"])')) == [2, 3]
    assert table.selected(parse_where('"Linux" in properties["os"]')) == [0, 4]
    assert table.selected(parse_where('properties["n"] >= 2 and properties["n"] < 5')) == [1, 2]
    assert table.selected(parse_where('number(properties["n"]) % 2 == 0')) == [1, 3]
