"""Parse `where` text into the typed tree of `eventkeep.query.ast`.

LALR with the tree built during parsing (no parse tree, no recursion), so hostile input costs
linear time and cannot exhaust the stack. Every failure becomes a `WhereSyntaxError` that names
the line and column and what would have been accepted there.
"""

from __future__ import annotations

import math
import re
from typing import Any, NoReturn

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from eventkeep.query import ast
from eventkeep.query.errors import WhereSyntaxError

# Everything downstream (evaluator, SQL compilers, the SQL engine) recurses over the tree or
# grows with it; real filters are a few levels deep and a few dozen terms long. A chain of
# `or`s (or `and`s) is one level here, but a walker that recurses into the left operand takes
# a stack frame or two per operand: the chain limit keeps those within Python's default limit.
MAX_DEPTH = 64
MAX_SIZE = 10_000
MAX_CHAIN = 200

GRAMMAR = r"""
?start: or_expr

?or_expr: and_expr
        | or_expr "or" and_expr             -> or_
?and_expr: not_expr
         | and_expr "and" not_expr          -> and_
?not_expr: compare
         | "not" not_expr                   -> not_
?compare: sum
        | compare COMPARE sum               -> comparison
        | compare "in" sum                  -> in_
?sum: product
    | sum "+" product                       -> add
    | sum "-" product                       -> sub
?product: unary
        | product "*" unary                 -> mul
        | product "/" unary                 -> div
        | product "%" unary                 -> mod
?unary: atom
      | "-" unary                           -> neg
?atom: NUMBER                               -> number
     | STRING                               -> string
     | "true"                               -> true
     | "false"                              -> false
     | "null"                               -> null
     | list                                 -> list_literal
     | NAME "[" STRING "]"                  -> accessor
     | NAME "(" ")"                         -> call
     | NAME "(" or_expr ("," or_expr)* ")"  -> call
     | NAME                                 -> bare_name
     | "(" or_expr ")"

list: "[" "]"
    | "[" constant ("," constant)* "]"
?constant: NUMBER                           -> const_number
         | "-" NUMBER                       -> const_negative
         | STRING                           -> const_string
         | "true"                           -> const_true
         | "false"                          -> const_false
         | "null"                           -> const_null
         | list

COMPARE: "==" | "!=" | ">=" | "<=" | ">" | "<"
NUMBER: /(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?/
STRING: /"(?:[^"\\]|\\.)*"/s
      | /'(?:[^'\\]|\\.)*'/s
NAME: /[A-Za-z_][A-Za-z0-9_]*/
%ignore /[ \t\r\n]+/
"""

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
ACCESSORS = ("properties", "user", "event")
EVENT_FIELDS: tuple[ast.EventField, ...] = ("$time", "$event_name")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
# Terminals that can start an operand: when all are acceptable, say "an expression".
_OPERAND_START = frozenset(
    {"NUMBER", "STRING", "NAME", "LPAR", "LSQB", "MINUS", "TRUE", "FALSE", "NULL"}
)
_CONSTANT_START = _OPERAND_START - {"NAME", "LPAR"}
_TERMINAL_NAMES = {
    "NUMBER": "a number",
    "STRING": "a string",
    "NAME": "a function or accessor name",
    "COMPARE": "a comparison (== != > >= < <=)",
    "$END": "the end of the expression",
}


def _show(text: str, limit: int = 40) -> str:
    """Quote user text for a message, escaping what a terminal or a JSON encoder can't take."""
    if len(text) > limit:
        text = text[:limit] + "…"
    shown = "".join(
        ch if ch.isprintable() else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"
        for ch in text
    )
    return f"'{shown}'"


class _Failure(Exception):
    """Raised inside parse callbacks; `parse` turns it into a located WhereSyntaxError."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


def _fail(message: str, token: Token, offset: int = 0) -> NoReturn:
    raise _Failure(message, (token.start_pos or 0) + offset)


def _number(token: Token, negative: bool = False) -> float:
    value = float(token)
    if not math.isfinite(value):
        _fail(f"number {_show(str(token))} is out of range", token)
    return -value if negative else value


def _unquote(token: Token) -> str:
    body = str(token)[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        code = body[i + 1]  # the STRING pattern guarantees a character after a backslash
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code == "u" and _HEX4.fullmatch(body, i + 2, i + 6):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        else:
            _fail(
                f"unknown escape {_show(body[i : i + 2])} in string "
                '(use \\", \\\', \\\\, \\/, \\n, \\t, \\r, \\b, \\f or \\uXXXX)',
                token,
                i + 1,
            )
    text = "".join(out)
    try:
        # Pairs of \u escapes make one character; a lone surrogate is not text.
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        _fail("string contains a lone surrogate (invalid Unicode)", token)


@v_args(inline=True)
class _Build(Transformer[Token, ast.Expr]):
    """Callbacks run by the parser at each reduction: they build the typed tree directly."""

    def or_(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("or", left, right)

    def and_(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("and", left, right)

    def not_(self, operand: ast.Expr) -> ast.Expr:
        return ast.Unary("not", operand)

    def comparison(self, left: ast.Expr, op: Token, right: ast.Expr) -> ast.Expr:
        return ast.Binary(str(op), left, right)  # type: ignore[arg-type]

    def in_(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("in", left, right)

    def add(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("+", left, right)

    def sub(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("-", left, right)

    def mul(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("*", left, right)

    def div(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("/", left, right)

    def mod(self, left: ast.Expr, right: ast.Expr) -> ast.Expr:
        return ast.Binary("%", left, right)

    def neg(self, operand: ast.Expr) -> ast.Expr:
        return ast.Unary("-", operand)

    def number(self, token: Token) -> ast.Expr:
        return ast.Literal(_number(token))

    def string(self, token: Token) -> ast.Expr:
        return ast.Literal(_unquote(token))

    def true(self) -> ast.Expr:
        return ast.Literal(True)

    def false(self) -> ast.Expr:
        return ast.Literal(False)

    def null(self) -> ast.Expr:
        return ast.Literal(None)

    def list_literal(self, items: tuple[ast.Constant, ...]) -> ast.Expr:
        return ast.Literal(items)

    def list(self, *items: ast.Constant) -> tuple[ast.Constant, ...]:
        return items

    def const_number(self, token: Token) -> ast.Constant:
        return _number(token)

    def const_negative(self, token: Token) -> ast.Constant:
        return _number(token, negative=True)

    def const_string(self, token: Token) -> ast.Constant:
        return _unquote(token)

    def const_true(self) -> ast.Constant:
        return True

    def const_false(self) -> ast.Constant:
        return False

    def const_null(self) -> ast.Constant:
        return None

    def accessor(self, name: Token, key_token: Token) -> ast.Expr:
        key = _unquote(key_token)
        if name == "properties":
            return ast.Property(key)
        if name == "user":
            return ast.UserProperty(key)
        if name == "event":
            for field in EVENT_FIELDS:
                if key == field:
                    return ast.EventAttribute(field)
            _fail(f'unknown event field {_show(key)}: expected "$time" or "$event_name"', key_token)
        _fail(f"unknown accessor {_show(str(name))}: expected one of {', '.join(ACCESSORS)}", name)

    def call(self, name: Token, *args: ast.Expr) -> ast.Expr:
        for function, arity in ast.ARITY.items():
            if name == function:
                if len(args) != arity:
                    plural = "argument" if arity == 1 else "arguments"
                    _fail(f"{function}() takes {arity} {plural}, got {len(args)}", name)
                return ast.Call(function, args)
        _fail(f"unknown function {_show(str(name))}{_case_hint(str(name))}", name)

    def bare_name(self, name: Token) -> ast.Expr:
        if name in ACCESSORS:
            _fail(f'{name} must be followed by ["name"]', name)
        if name in ast.ARITY:
            _fail(f"{name} must be followed by (", name)
        _fail(f"unknown name {_show(str(name))}{_case_hint(str(name))}", name)


def _case_hint(name: str) -> str:
    lower = name.lower()
    if lower != name and (lower in KEYWORDS or lower in ast.ARITY or lower in ACCESSORS):
        return " (keywords and function names are lower case)"
    return ""


_PARSER = Lark(GRAMMAR, parser="lalr", lexer="basic", transformer=_Build(), maybe_placeholders=False)


def _where(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {column}" if "\n" in text else f"column {column}"


def _describe_expected(names: set[str]) -> str:
    names = set(names)
    parts: list[str] = []
    if names >= _OPERAND_START:
        parts.append("an expression")
        names -= _OPERAND_START | {"NOT"}
    elif names >= _CONSTANT_START:
        parts.append("a literal (list items are numbers, strings, true, false, null or lists)")
        names -= _CONSTANT_START
    for name in sorted(names, key=lambda n: (n == "$END", n)):
        if name in _TERMINAL_NAMES:
            parts.append(_TERMINAL_NAMES[name])
            continue
        pattern = _PARSER.get_terminal(name).pattern
        parts.append(f"'{pattern.value}'")
    if not parts:
        return ""
    if len(parts) == 1:
        return f", expected {parts[0]}"
    return f", expected one of: {', '.join(parts)}"


def _accepted_before(text: str, pos: int) -> set[str]:
    """What the parser would have taken at `pos`, where the lexer found no token."""
    interactive = _PARSER.parse_interactive(text[:pos])
    interactive.exhaust_lexer()
    return set(interactive.accepts())


def _syntax_error(text: str, error: UnexpectedInput) -> WhereSyntaxError:
    if isinstance(error, UnexpectedCharacters):
        pos = error.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        if char in "\"'":
            return WhereSyntaxError(f"unclosed string starting at {_where(text, pos)}")
        try:
            expected = _describe_expected(_accepted_before(text, pos))
        except _Failure as failure:  # an earlier mistake, found on the way
            return _located(text, failure)
        except UnexpectedInput:
            expected = ""
        return WhereSyntaxError(f"unexpected character {_show(char)} at {_where(text, pos)}{expected}")
    if isinstance(error, UnexpectedToken):
        token = error.token
        expected = _describe_expected(set(error.accepts or error.expected or ()))
        if token.type == "$END":
            if not text.strip():
                return WhereSyntaxError("empty expression")
            end = _where(text, len(text.rstrip()))
            return WhereSyntaxError(f"unexpected end of expression at {end}{expected}")
        where = _where(text, token.start_pos or 0)
        return WhereSyntaxError(f"unexpected {_show(str(token))} at {where}{expected}")
    return WhereSyntaxError(f"syntax error: {error}")  # pragma: no cover - lark's other kinds


def _located(text: str, failure: _Failure) -> WhereSyntaxError:
    return WhereSyntaxError(f"{failure.message} (at {_where(text, failure.pos)})")


def parse(text: str) -> ast.Expr:
    """Parse a `where` expression; raises WhereSyntaxError saying where and what was expected."""
    try:
        tree: Any = _PARSER.parse(text)
    except _Failure as failure:
        raise _located(text, failure) from None
    except UnexpectedInput as error:
        raise _syntax_error(text, error) from None
    depth, size, chain = ast.measure(tree)
    if depth > MAX_DEPTH:
        raise WhereSyntaxError(f"expression is nested more than {MAX_DEPTH} levels deep")
    if size > MAX_SIZE:
        raise WhereSyntaxError(f"expression has more than {MAX_SIZE} terms")
    if chain > MAX_CHAIN:
        raise WhereSyntaxError(
            f"more than {MAX_CHAIN} operands joined by 'and' or by 'or' (use `in [...]` for long "
            "lists of alternatives)"
        )
    return tree
