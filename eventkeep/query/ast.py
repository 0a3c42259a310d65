"""The typed syntax tree of a `where` expression.

Frozen so a parsed filter can sit in a frozen `ScanQuery` and be compared in tests.
List literals hold only constants (the spec counts lists among the literals), which lets every
store compile them to plain parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal as Lit
from typing import TypeAlias

# A constant: lists are tuples so that literals stay hashable.
Constant: TypeAlias = "str | float | bool | tuple[Constant, ...] | None"

BinaryOp = Lit["or", "and", "==", "!=", ">", ">=", "<", "<=", "in", "+", "-", "*", "/", "%"]
UnaryOp = Lit["not", "-"]
EventField = Lit["$time", "$event_name"]
Function = Lit[
    "defined", "boolean", "number", "string", "floor", "ceil", "round", "datetime", "has_prefix"
]

ARITY: dict[Function, int] = {
    "defined": 1,
    "boolean": 1,
    "number": 1,
    "string": 1,
    "floor": 1,
    "ceil": 1,
    "round": 1,
    "datetime": 1,
    "has_prefix": 2,
}


@dataclass(frozen=True, slots=True)
class Literal:
    value: Constant


@dataclass(frozen=True, slots=True)
class Property:
    """`properties["name"]`: an event property."""

    name: str


@dataclass(frozen=True, slots=True)
class UserProperty:
    """`user["name"]`: a property of the profile of the event's distinct_id."""

    name: str


@dataclass(frozen=True, slots=True)
class EventAttribute:
    """`event["$time"]` or `event["$event_name"]`."""

    name: EventField


@dataclass(frozen=True, slots=True)
class Unary:
    op: UnaryOp
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    op: BinaryOp
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Call:
    function: Function
    args: tuple[Expr, ...]


Expr: TypeAlias = Literal | Property | UserProperty | EventAttribute | Unary | Binary | Call


def children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, Call):
        return expr.args
    return ()


def operands(expr: Binary) -> list[Expr]:
    """The operands of a chain `a op b op c …` of one operator (left-associated), in order."""
    found: list[Expr] = []
    node: Expr = expr
    while isinstance(node, Binary) and node.op == expr.op:
        found.append(node.right)
        node = node.left
    found.append(node)
    return found[::-1]


def measure(expr: Expr) -> tuple[int, int, int]:
    """Nesting depth, size (nodes plus list literal items) and longest `and`/`or` chain,
    computed without recursion.

    A chain of `and`s or of `or`s counts as one level: everything here treats it as one
    n-ary operation. The other operators nest.
    """
    deepest = size = longest = 0
    stack: list[tuple[Expr | Constant, int]] = [(expr, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        size += 1
        if isinstance(node, tuple):
            stack.extend((item, level + 1) for item in node)
        elif isinstance(node, Literal):
            if isinstance(node.value, tuple):
                stack.append((node.value, level))
                size -= 1  # the tuple stands for this literal
        elif isinstance(node, Binary) and node.op in ("and", "or"):
            chain = operands(node)
            longest = max(longest, len(chain))
            stack.extend((operand, level + 1) for operand in chain)
        elif isinstance(node, Unary | Binary | Call):
            stack.extend((child, level + 1) for child in children(node))
    return deepest, size, longest
