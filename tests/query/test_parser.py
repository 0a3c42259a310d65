"""The `where` grammar: the trees it builds, and how it refuses everything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventkeep.query import WhereSyntaxError, ast, parse_where
from eventkeep.query.parser import MAX_CHAIN, MAX_DEPTH, MAX_SIZE
from tests.query import strategies

P = ast.Property
L = ast.Literal


def B(op: ast.BinaryOp, left: ast.Expr, right: ast.Expr) -> ast.Binary:
    return ast.Binary(op, left, right)


TREES = [
    ('properties["a"]', P("a")),
    ("properties['a']", P("a")),
    ('user["$email"]', ast.UserProperty("$email")),
    ('event["$time"]', ast.EventAttribute("$time")),
    ('event["$event_name"]', ast.EventAttribute("$event_name")),
    ("12", L(12.0)),
    ("1.5", L(1.5)),
    (".5", L(0.5)),
    ("1e3", L(1000.0)),
    ("1E+3", L(1000.0)),
    ("2.5e-1", L(0.25)),
    ("true", L(True)),
    ("false", L(False)),
    ("null", L(None)),
    (r'"a\"b\\c\nd\te"', L('a"b\\c\nd\te')),
    (r"'it\'s \"x\"'", L("it's \"x\"")),
    (r'"\u00e9\ud83d\ude00\/"', L("é😀/")),
    ('"multi\nline"', L("multi\nline")),
    ("[]", L(())),
    ('[1, -2, "a", [true, null], []]', L((1.0, -2.0, "a", (True, None), ()))),
    ("-1", ast.Unary("-", L(1.0))),
    ("- -1", ast.Unary("-", ast.Unary("-", L(1.0)))),
    # precedence, loosest first: or, and, not, comparisons, + -, * / %, unary -
    ("1 or 2 and 3", B("or", L(1.0), B("and", L(2.0), L(3.0)))),
    ("1 and 2 or 3", B("or", B("and", L(1.0), L(2.0)), L(3.0))),
    ("not 1 and 2", B("and", ast.Unary("not", L(1.0)), L(2.0))),
    ("not 1 == 2", ast.Unary("not", B("==", L(1.0), L(2.0)))),
    ('not "F" in properties["r"]', ast.Unary("not", B("in", L("F"), P("r")))),
    ("not not 1", ast.Unary("not", ast.Unary("not", L(1.0)))),
    ("1 == 2 + 3", B("==", L(1.0), B("+", L(2.0), L(3.0)))),
    ("1 + 2 * 3", B("+", L(1.0), B("*", L(2.0), L(3.0)))),
    ("-1 * 2", B("*", ast.Unary("-", L(1.0)), L(2.0))),
    ("1 - -2", B("-", L(1.0), ast.Unary("-", L(2.0)))),
    # one level associates to the left
    ("1 - 2 - 3", B("-", B("-", L(1.0), L(2.0)), L(3.0))),
    ("1 / 2 % 3 * 4", B("*", B("%", B("/", L(1.0), L(2.0)), L(3.0)), L(4.0))),
    ("1 == 2 != 3", B("!=", B("==", L(1.0), L(2.0)), L(3.0))),
    ("1 < 2 in 3", B("in", B("<", L(1.0), L(2.0)), L(3.0))),
    ("1 or 2 or 3", B("or", B("or", L(1.0), L(2.0)), L(3.0))),
    ("(1 or 2) and 3", B("and", B("or", L(1.0), L(2.0)), L(3.0))),
    ("1 * (2 + 3)", B("*", L(1.0), B("+", L(2.0), L(3.0)))),
    # comparison operators
    *((f"1 {op} 2", B(op, L(1.0), L(2.0))) for op in ("==", "!=", ">", ">=", "<", "<=")),
    ("1>=2", B(">=", L(1.0), L(2.0))),
    # functions
    ('defined(properties["a"])', ast.Call("defined", (P("a"),))),
    ('defined (properties["a"])', ast.Call("defined", (P("a"),))),
    ('has_prefix(string(user["d"]), "2016")', ast.Call("has_prefix", (ast.Call("string", (ast.UserProperty("d"),)), L("2016")))),
    ('datetime("2024-01-01")', ast.Call("datetime", (L("2024-01-01"),))),
    *(
        (f"{f}(1)", ast.Call(f, (L(1.0),)))
        for f in ("boolean", "number", "string", "floor", "ceil", "round")
    ),
    # whitespace
    (' \t\n properties["a"]\r\n== 1 ', B("==", P("a"), L(1.0))),
]


@pytest.mark.parametrize(("text", "tree"), TREES)
def test_trees(text: str, tree: ast.Expr) -> None:
    assert parse_where(text) == tree


ERRORS = [
    # (text, fragments the message must contain)
    ("", ["empty expression"]),
    ("   ", ["empty expression"]),
    ("foo", ["unknown name 'foo'", "column 1"]),
    ("TRUE", ["unknown name 'TRUE'", "lower case"]),
    ('Properties["a"]', ["unknown accessor 'Properties'", "column 1"]),
    ("foo(1)", ["unknown function 'foo'", "column 1"]),
    ("1 + lower(2)", ["unknown function 'lower'", "column 5"]),
    ("DEFINED(1)", ["unknown function 'DEFINED'", "lower case"]),
    ("has_prefix(1)", ["has_prefix() takes 2 arguments, got 1", "column 1"]),
    ("defined()", ["defined() takes 1 argument, got 0"]),
    ("round(1, 2)", ["round() takes 1 argument, got 2"]),
    ('event["time"]', ["unknown event field 'time'", "$time", "column 7"]),
    ("properties", ["properties must be followed by", "column 1"]),
    ("defined", ["defined must be followed by ("]),
    ("properties[1]", ["unexpected '1'", "column 12", "a string"]),
    ('properties["a"]["b"]', ["unexpected '['", "column 16"]),
    ('"abc', ["unclosed string", "column 1"]),
    ("'abc\"", ["unclosed string", "column 1"]),
    ('1 == "a\\', ["unclosed string", "column 6"]),
    ("(1", ["unexpected end of expression", "column 3", "')'"]),
    ("[1, 2", ["unexpected end of expression", "']'"]),
    ("1 +", ["unexpected end of expression", "column 4", "an expression"]),
    ("1 2", ["unexpected '2'", "column 3"]),
    ("1 or or 2", ["unexpected 'or'", "column 6", "an expression"]),
    ("1 & 2", ["unexpected character '&'", "column 3", "'and'"]),
    ("1 == 2 ;", ["unexpected character ';'", "column 8", "end of the expression"]),
    ("a == 1", ["unknown name 'a'", "column 1"]),
    ("1 ==\n  ?", ["unexpected character '?'", "line 2, column 3"]),
    ("1 = 2", ["unexpected character '='", "column 3"]),
    ("1.", ["unexpected character '.'", "column 2"]),
    ("1e999", ["out of range", "column 1"]),
    ('[properties["a"]]', ["unexpected 'properties'", "column 2", "a literal"]),
    ("[1, x]", ["unexpected 'x'", "column 5", "a literal"]),
    ("[1,]", ["unexpected ']'", "column 4", "a literal"]),
    ("floor(1,)", ["unexpected ')'", "column 9", "an expression"]),
    (r'"\q"', ["unknown escape", "column 2"]),
    (r'"\u12"', ["unknown escape"]),
    (r'"\ud800"', ["lone surrogate"]),
    ('"\ud800"', ["lone surrogate"]),
    ("\ud800", ["unexpected character '\\ud800'"]),
    ("é", ["unexpected character 'é'", "column 1"]),
    ("not", ["unexpected end of expression", "an expression"]),
    ("()", ["unexpected ')'", "column 2"]),
    ("1 == == 2", ["unexpected '=='", "column 6"]),
]


@pytest.mark.parametrize(("text", "fragments"), ERRORS)
def test_syntax_errors(text: str, fragments: list[str]) -> None:
    with pytest.raises(WhereSyntaxError) as caught:
        parse_where(text)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message


def test_error_is_a_value_error() -> None:
    assert issubclass(WhereSyntaxError, ValueError)


def test_messages_are_printable() -> None:
    """Messages end up in JSON error bodies: control characters and surrogates are escaped."""
    for text in ["\x00", "\ud800", "1 \x1b", '"\x00" == \x07']:
        with pytest.raises(WhereSyntaxError) as caught:
            parse_where(text)
        assert str(caught.value).isprintable()
        str(caught.value).encode("utf-8")


def test_nesting_limit() -> None:
    # Parentheses add no level; the parser itself never recurses.
    assert parse_where("(" * 100_000 + "1" + ")" * 100_000) == L(1.0)
    deep = "not " * (MAX_DEPTH - 1) + "true"
    assert ast.measure(parse_where(deep)) == (MAX_DEPTH, MAX_DEPTH, 0)
    for text in [
        "not " * MAX_DEPTH + "true",
        "-" * 1000 + "1",
        " + ".join(["1"] * (MAX_DEPTH + 1)),
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        "true or " + "not " * (MAX_DEPTH - 1) + "true",
    ]:
        with pytest.raises(WhereSyntaxError, match="nested more than"):
            parse_where(text)


def test_chains_of_and_or_are_one_level() -> None:
    """Long `or` chains are common in generated filters; they are flat, not deep."""
    text = " or ".join(f'properties["n"] == {i}' for i in range(MAX_CHAIN))
    expr = parse_where(text)
    assert isinstance(expr, ast.Binary)
    assert ast.measure(expr) == (3, 1 + MAX_CHAIN * 3, MAX_CHAIN)
    assert ast.operands(expr) == [B("==", P("n"), L(float(i))) for i in range(MAX_CHAIN)]
    with pytest.raises(WhereSyntaxError, match=f"more than {MAX_CHAIN} operands"):
        parse_where(" and ".join(["true"] * (MAX_CHAIN + 1)))


def test_size_limit() -> None:
    assert parse_where("[" + ", ".join(["1"] * (MAX_SIZE - 1)) + "]") == L((1.0,) * (MAX_SIZE - 1))
    for text in [
        "[" + ", ".join(["1"] * MAX_SIZE) + "]",
        " or ".join(["[" + ", ".join(["1"] * 99) + "]"] * 101),
    ]:
        with pytest.raises(WhereSyntaxError, match=f"more than {MAX_SIZE} terms"):
            parse_where(text)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(text=st.text())
def test_any_text_parses_or_raises_a_syntax_error(text: str) -> None:
    try:
        parse_where(text)
    except WhereSyntaxError as error:
        assert str(error)


TOKENS = [
    "properties", "user", "event", "[", "]", "(", ")", ",", '"a"', "'$time'", '"$time"', '"',
    "'", "\\", "1", ".5", "1e3", "-", "+", "*", "/", "%", "==", "!=", ">", ">=", "<", "<=", "=",
    "in", "and", "or", "not", "true", "false", "null", "defined", "boolean", "number", "string",
    "floor", "ceil", "round", "datetime", "has_prefix", "x", " ", "\n", "é", "\x00",
]


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=25))
def test_token_soup_parses_or_raises_a_syntax_error(tokens: list[str]) -> None:
    """Near-miss input reaches every parser state: still only WhereSyntaxError, with a place."""
    text = " ".join(tokens) if len(tokens) % 2 else "".join(tokens)
    try:
        parse_where(text)
    except WhereSyntaxError as error:
        message = str(error)
        assert "column" in message or "empty expression" in message or "nested" in message, message


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(expr=strategies.expressions())
def test_printed_trees_parse_back(expr: ast.Expr) -> None:
    assert parse_where(strategies.to_text(expr)) == expr
