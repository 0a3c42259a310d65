"""Hypothesis strategies for `where` expressions and events, and a printer back to text.

Literals and property values are drawn from shared pools, so that random expressions often
compare equal values, hit substrings, parse as numbers or dates, and so on.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st

from eventkeep.ingest.limits import MAX_NESTING_DEPTH
from eventkeep.query import ast
from eventkeep.query.parser import EVENT_FIELDS
from tests.query.harness import Event, event

NAMES = [
    "s", "n", "i", "f", "b", "z", "l", "o", "d", "", "$os", 'we"ird', "back\\slash", "dot.ted",
    "br[0]", "sl/ash~0", "é 名", "time", "distinct_id", "missing",
]
STRINGS = [
    "", "a", "ab", "abc", "b", "Linux", "false", "true", "0", "1", "3", " 12 ", "\t-4.5e1\n",
    "1e400", "-0", ".5", "1.", "+.5e3", "0x10", "1_000", "Infinity", "NaN", "1 2", "é", "日本語",
    "a\x00b", 'q"', "back\\", "2024-02-29", "2023-02-29", "2024-01-01T00:00:00",
    "2024-01-01T23:59:59.123456Z", "2024-01-01T24:00:00", "0000-01-01", "0099-12-31",
    "2024-13-01", " 2024-01-01", "2024-01-01Z", "2024-01-01T10:00:00.5", "1e21", "Linux\n",
    "1e-7", "0.000001", "100", "1.5",
]
FLOATS = [
    0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 3.0, 0.1, 0.3, 7.0, 1e16, 1e21, 1e-7,
    1e-6, 123456.789, 1e300, -1e300, 5e-324, 2.0**63, 2.0**64, 1e15, 1700000000.5,
    1.7976931348623157e308, 0.49999999999999994, 4503599627370497.0, 1e20, 1.2345678901234568e20,
    -1.2345e-5, 0.000123, 1e-5, 100.0, 120.0, 8.98846567431158e307,
]
INTS = [0, 1, -1, 2, 3, 100, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**64 + 1, -(2**63) - 1, 10**21, 10**30]
KEYS = ["k", "j", "", 'q"']

BINARY_OPS: list[ast.BinaryOp] = ["or", "and", "==", "!=", ">", ">=", "<", "<=", "in", "+", "-", "*", "/", "%"]



# Text that is, or nearly is, a decimal number: what number() must read or refuse.
numeric_strings = st.tuples(
    st.sampled_from(["", " ", "\t", "\n ", "\u00a0", "\v"]),
    st.sampled_from(["", "-", "+", "--"]),
    st.sampled_from(["", "0", "1", "12", "007", "123456789012345678901234567890"]),
    st.sampled_from(["", ".", ".5", ".25", ".000", ".1234567890123456789"]),
    st.sampled_from(["", "e5", "E-3", "e+308", "e309", "e-400", "e", "e0000000000000000000001"]),
    st.sampled_from(["", " ", "\r\n", "x"]),
    st.sampled_from(["", "", "", "_0"]),
).map(lambda t: t[0] + t[1] + t[2] + t[6] + t[3] + t[4] + t[5])

# Text that is, or nearly is, a date or date-time: what datetime() must read or refuse.
date_strings = st.tuples(
    st.sampled_from(["2024", "2023", "1970", "0001", "0000", "9999", "0099", "1900", "2000", "24"]),
    st.sampled_from(["-01", "-02", "-12", "-13", "-00", "-1", "/01"]),
    st.sampled_from(["-01", "-28", "-29", "-30", "-31", "-32", "-00"]),
    st.sampled_from(
        ["", "T00:00:00", "T23:59:59", "T24:00:00", "T12:60:00", "T12:00:60", " 12:00:00",
         "T12:00", "t12:00:00", "T12:34:56"]
    ),
    st.sampled_from(["", ".5", ".123456", ".1234567", "."]),
    st.sampled_from(["", "Z", "z", "+00:00", " "]),
).map("".join)

strings = st.one_of(st.sampled_from(STRINGS), st.text(max_size=6), numeric_strings, date_strings)
floats = st.one_of(st.sampled_from(FLOATS), st.floats(allow_nan=False, allow_infinity=False))
ints = st.one_of(st.sampled_from(INTS), st.integers(min_value=-(2**70), max_value=2**70))
scalars = st.one_of(strings, floats, ints, st.booleans(), st.none())


def json_values(containers: int = MAX_NESTING_DEPTH) -> st.SearchStrategy[Any]:
    """JSON values as ingestion accepts them: containers nest at most MAX_NESTING_DEPTH deep."""
    if containers == 0:
        return scalars
    inner = json_values(containers - 1)
    return st.one_of(
        scalars,
        scalars.map(lambda x: x),
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    )


def _constant(depth: int) -> st.SearchStrategy[ast.Constant]:
    numbers = st.one_of(floats, ints.map(float))
    base = st.one_of(strings, numbers, st.booleans(), st.none())
    if depth == 0:
        return base
    return st.one_of(base, base.map(lambda x: x), st.lists(_constant(depth - 1), max_size=4).map(tuple))


# Literal lists may nest deeper than stored data can, to cover that boundary.
constants = _constant(MAX_NESTING_DEPTH + 1)
property_names = st.one_of(*(st.sampled_from(NAMES) for _ in range(4)), st.text(max_size=4))


def _literals() -> st.SearchStrategy[ast.Expr]:
    # Top-level number literals are non-negative: `-x` parses as a negation, not a literal.
    numbers = st.one_of(floats, ints.map(float)).map(abs)
    scalar = st.one_of(strings, numbers, st.booleans(), st.none())
    lists = st.lists(constants, max_size=5).map(tuple)
    return st.one_of(scalar, lists).map(ast.Literal)


def _leaves() -> st.SearchStrategy[ast.Expr]:
    # Weighted by repetition, with fresh strategy objects (one_of counts an object once).
    return st.one_of(
        _literals(),
        *(property_names.map(ast.Property) for _ in range(3)),
        st.sampled_from(EVENT_FIELDS).map(ast.EventAttribute),
        st.sampled_from(["x", "$email"]).map(ast.UserProperty),
    )


UNARY_FUNCTIONS: list[ast.Function] = [
    "defined", "boolean", "number", "string", "floor", "ceil", "round", "datetime"
]


def _focused(sub: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
    """Shapes real filters have, so that random ones often tell events apart."""
    properties = property_names.map(ast.Property)
    functions = st.sampled_from(UNARY_FUNCTIONS)
    operand = st.one_of(properties, st.builds(lambda f, p: ast.Call(f, (p,)), functions, properties))
    compare_ops = st.sampled_from(["==", "!=", ">", ">=", "<", "<=", "in"])
    when = st.builds(
        lambda op, text: ast.Binary(op, ast.EventAttribute("$time"), ast.Call("datetime", (ast.Literal(text),))),
        st.sampled_from([">", ">=", "<", "<=", "=="]),
        st.sampled_from(["2024-01-01", "2023-11-14T22:13:20.123", "1971-01-01T00:00:00Z", "2100-01-01"]),
    )
    return st.one_of(
        st.builds(ast.Binary, compare_ops, operand, _literals()),
        st.builds(ast.Binary, compare_ops, _literals(), operand),
        st.builds(ast.Binary, compare_ops, operand, operand),
        st.builds(ast.Binary, st.sampled_from(["and", "or"]), sub, sub),
        when,
    )


def expressions(depth: int = 4) -> st.SearchStrategy[ast.Expr]:
    leaf = _leaves()
    if depth == 0:
        return leaf
    sub = expressions(depth - 1)
    return st.one_of(
        leaf,
        _focused(sub),
        _focused(sub),
        st.builds(ast.Unary, st.sampled_from(["not", "-"]), sub),
        st.builds(ast.Binary, st.sampled_from(BINARY_OPS), sub, sub),
        st.builds(ast.Binary, st.sampled_from(BINARY_OPS), sub, leaf),
        st.builds(lambda f, x: ast.Call(f, (x,)), st.sampled_from(UNARY_FUNCTIONS), sub),
        st.builds(lambda a, b: ast.Call("has_prefix", (a, b)), sub, sub),
    )


@st.composite
def events(draw: st.DrawFn, max_properties: int = 6) -> Event:
    names = draw(st.lists(st.sampled_from(NAMES[:-3]), max_size=max_properties, unique=True))
    props = {name: draw(json_values()) for name in names}
    return event(
        draw(st.sampled_from(["a", "b", "Signed up", ""])),
        draw(st.integers(min_value=31_536_000_000, max_value=4_102_444_800_000)),
        draw(st.sampled_from(["u", "abc", "1", "Linux", ""])),
        **props,
    )


def _random_json(rng: random.Random, containers: int) -> Any:
    roll = rng.random()
    if containers and roll < 0.15:
        return [_random_json(rng, containers - 1) for _ in range(rng.randrange(4))]
    if containers and roll < 0.25:
        return {k: _random_json(rng, containers - 1) for k in rng.sample(KEYS, rng.randrange(3))}
    pool: list[Any] = rng.choice([STRINGS, FLOATS, INTS, [True, False, None]])
    return rng.choice(pool)


def fixed_events(count: int = 30, seed: int = 20240101) -> list[Event]:
    """A deterministic table: every property of the pool, every type, some missing."""
    rng = random.Random(seed)
    out = [
        event("a", 1_704_067_200_000, "u", s="Linux", n=3, i=2**64 + 1, f=1.5, b=True, z=None,
              l=[1, "x", [2, [3]]], o={"k": [1, {"j": None}], "j": "v"}, d="2024-01-01"),
        event("Signed up", 1_700_000_000_123, "abc", s="", n=0, i=-(2**63) - 1, f=-2.5, b=False,
              l=[], o={}, d="2024-02-30"),
    ]
    for _ in range(count - len(out)):
        props = {
            name: _random_json(rng, MAX_NESTING_DEPTH)
            for name in NAMES[:-3]
            if rng.random() < 0.6
        }
        out.append(
            event(
                rng.choice(["a", "b", "Signed up", ""]),
                rng.randrange(31_536_000_000, 4_102_444_800_000),
                rng.choice(["u", "abc", "1", "Linux", ""]),
                **props,
            )
        )
    return out


# -- printing ----------------------------------------------------------------------------------


def quote(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def constant_text(value: ast.Constant) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, float):
        return repr(value)
    return "[" + ", ".join(constant_text(v) for v in value) + "]"


def to_text(expr: ast.Expr) -> str:
    """Fully parenthesised source text that parses back to `expr`."""
    if isinstance(expr, ast.Literal):
        return constant_text(expr.value)
    if isinstance(expr, ast.Property):
        return f"properties[{quote(expr.name)}]"
    if isinstance(expr, ast.UserProperty):
        return f"user[{quote(expr.name)}]"
    if isinstance(expr, ast.EventAttribute):
        return f"event[{quote(expr.name)}]"
    if isinstance(expr, ast.Unary):
        return f"{expr.op} ({to_text(expr.operand)})"
    if isinstance(expr, ast.Binary):
        return f"({to_text(expr.left)}) {expr.op} ({to_text(expr.right)})"
    return f"{expr.function}({', '.join(to_text(a) for a in expr.args)})"
