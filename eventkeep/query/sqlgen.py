"""Compile a `where` tree to SQL for any engine, through a small typed intermediate form.

A `where` value can be of any of eight types, decided per row. Each subexpression compiles to a
`Tagged` value: one SQL expression per type it can have at run time (its *slots*), where the
slot of type T is non-NULL exactly when the value has type T. Undefined is "every slot NULL", so
SQL's NULL propagation does most of the spec's work (`a.number + b.number` is NULL, that is
undefined, unless both are numbers). Slots of types a subexpression can never have are left
out, so typical filters compile to plain comparisons.

Each operation writes each slot of its operands at most once (or binds it to a name first),
so the SQL grows linearly with the expression; an engine that copied repeated operands would
otherwise take exponential time on nested expressions. Everything engine-specific (JSON access, lists,
casts, regular expressions, parameters) goes through the `Dialect` protocol; this module
only writes CASE, COALESCE, boolean logic, comparisons and arithmetic, which mean the same
in DuckDB and ClickHouse.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventkeep.ingest.limits import MAX_NESTING_DEPTH
from eventkeep.query import ast
from eventkeep.query.evaluate import (
    UNDEFINED,
    DateTime,
    Undefined,
    Value,
    evaluate,
    to_boolean,
)
from eventkeep.query.evaluate import equals as values_equal


class Kind(enum.Enum):
    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATETIME = "datetime"
    LIST = "list"
    OBJECT = "object"
    NULL = "null"


# Scalars compare with SQL `=`; containers need a structural comparison.
SCALARS = (Kind.STRING, Kind.NUMBER, Kind.BOOLEAN, Kind.DATETIME)


@dataclass(frozen=True, slots=True)
class Sql:
    """A SQL fragment; `params` fill its `?` placeholders in order."""

    text: str
    params: tuple[Any, ...] = ()


def sql(template: str, *args: Sql) -> Sql:
    """Fill each `{}` of `template` with a fragment, keeping parameters in text order."""
    pieces = template.split("{}")
    if len(pieces) != len(args) + 1:
        raise ValueError(f"template {template!r} takes {len(pieces) - 1} fragments, got {len(args)}")
    text = [pieces[0]]
    params: list[Any] = []
    for arg, piece in zip(args, pieces[1:], strict=True):
        text.append(arg.text)
        text.append(piece)
        params.extend(arg.params)
    return Sql("".join(text), tuple(params))


TRUE = Sql("TRUE")
FALSE = Sql("FALSE")


@dataclass(frozen=True, slots=True)
class Tagged:
    """A compiled value: for each type it may have, an expression non-NULL iff it has it.

    The NULL slot, when present, is TRUE for a JSON null. `constant` holds the value when it
    is known at compile time (then the slots are parameters).
    """

    slots: Mapping[Kind, Sql]
    constant: Value | Undefined = UNDEFINED
    is_constant: bool = False

    def __getitem__(self, kind: Kind) -> Sql:
        return self.slots[kind]

    def has(self, kind: Kind) -> bool:
        return kind in self.slots


class Dialect(Protocol):
    """What an engine must provide. Every function returns NULL when an input is NULL."""

    def string(self, value: str) -> Sql: ...
    def number(self, value: float) -> Sql: ...
    def datetime(self, micros: int) -> Sql: ...
    def json(self, value: Any) -> Sql:
        """A constant list or object as a JSON value."""
        ...

    def property(self, name: str) -> dict[Kind, Sql]:
        """The slots of a stored event property (neither `time` nor `distinct_id`)."""
        ...

    def time_seconds(self) -> Sql: ...
    def distinct_id(self) -> Sql: ...
    def event_time(self) -> Sql:
        """The event's time in microseconds since the epoch."""
        ...

    def event_name(self) -> Sql: ...
    def json_slots(self, value: Sql) -> dict[Kind, Sql]:
        """The slots of a JSON value (a list element or object member)."""
        ...

    def json_length(self, array: Sql) -> Sql: ...
    def json_any(self, array: Sql, test: Callable[[Sql], Sql]) -> Sql:
        """TRUE if `test` is TRUE for some element; NULL for an empty array."""
        ...

    def json_canonical(self, value: Sql, depth: int) -> Sql:
        """Text that two JSON values share exactly when they are `==`: NULL when the value
        holds a null anywhere or containers nested more than `depth` deep."""
        ...

    def let(self, values: Mapping[str, Sql], body: Callable[[Mapping[str, Sql]], Sql]) -> Sql:
        """`body` given names bound to `values` (keys are plain identifiers), each written and
        evaluated once."""
        ...

    def finite(self, number: Sql) -> Sql:
        """The number, or NULL if it is infinite or NaN."""
        ...

    def remainder(self, dividend: Sql, divisor: Sql) -> Sql:
        """Truncated remainder (the sign of the dividend); NaN or NULL for a zero divisor."""
        ...

    def floor(self, number: Sql) -> Sql: ...
    def ceil(self, number: Sql) -> Sql: ...
    def round_half_away(self, number: Sql) -> Sql: ...
    def is_true_text(self, text: Sql) -> Sql:
        """Whether a string counts as true: it is neither empty nor "false"."""
        ...

    def one_of(self, value: Sql, options: Sequence[Sql]) -> Sql:
        """`value IN (options)`."""
        ...

    def contains(self, haystack: Sql, needle: Sql) -> Sql: ...
    def starts_with(self, text: Sql, prefix: Sql) -> Sql: ...
    def parse_number(self, text: Sql) -> Sql:
        """`evaluate.NUMBER_TEXT` read as a finite double, else NULL."""
        ...

    def format_number(self, number: Sql) -> Sql:
        """As `evaluate.format_number`."""
        ...

    def parse_datetime(self, text: Sql) -> Sql:
        """`evaluate.DATETIME_TEXT` as epoch microseconds, else NULL."""
        ...

    def boolean_to_string(self, value: Sql) -> Sql: ...
    def boolean_to_number(self, value: Sql) -> Sql: ...


def _coalesce(terms: Sequence[Sql]) -> Sql | None:
    if not terms:
        return None
    if len(terms) == 1:
        return terms[0]
    return sql(f"coalesce({', '.join(['{}'] * len(terms))})", *terms)


def _true_or_false(condition: Sql) -> Sql:
    return condition if condition in (TRUE, FALSE) else sql("coalesce({}, FALSE)", condition)


def _any(conditions: Sequence[Sql]) -> Sql:
    """OR of conditions that are each TRUE or FALSE, never NULL."""
    if not conditions:
        return FALSE
    return sql("(" + " OR ".join(["{}"] * len(conditions)) + ")", *conditions)


def _scalars_equal(left: Mapping[Kind, Sql], right: Mapping[Kind, Sql]) -> list[Sql]:
    """For each scalar type both sides may have: TRUE when both have it and are equal."""
    return [
        _true_or_false(sql("({} = {})", left[k], right[k]))
        for k in SCALARS
        if k in left and k in right
    ]


def _is_constant(expr: ast.Expr) -> bool:
    """Whether the value is the same for every event (no event accessor inside)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Property | ast.EventAttribute):
            return False
        if isinstance(node, ast.Binary) and node.op in ("and", "or"):
            stack.extend(ast.operands(node))
        else:
            stack.extend(ast.children(node))
    return True


@dataclass
class Compiler:
    """Compiles expressions for one dialect object (which may keep state, such as names)."""

    dialect: Dialect
    # Containers nest at most this deep in stored events (ingestion refuses deeper ones), so
    # comparisons of two stored containers unfold to a fixed depth.
    container_depth: int = MAX_NESTING_DEPTH

    def where(self, expr: ast.Expr) -> Sql:
        """A condition TRUE exactly for the events that `evaluate.matches`, never NULL."""
        return self.boolean(self.compile(expr))

    # -- values ----------------------------------------------------------------------------

    def constant(self, value: Value) -> Tagged:
        d = self.dialect
        slots: dict[Kind, Sql] = {}
        if value is None:
            slots[Kind.NULL] = TRUE
        elif isinstance(value, bool):
            slots[Kind.BOOLEAN] = TRUE if value else FALSE
        elif isinstance(value, str):
            slots[Kind.STRING] = d.string(value)
        elif isinstance(value, float):
            slots[Kind.NUMBER] = d.number(value)
        elif isinstance(value, DateTime):
            slots[Kind.DATETIME] = d.datetime(value.micros)
        elif isinstance(value, list | tuple):
            slots[Kind.LIST] = d.json(value)
        elif isinstance(value, dict):
            slots[Kind.OBJECT] = d.json(value)
        return Tagged(slots, value, is_constant=True)

    def compile(self, expr: ast.Expr) -> Tagged:
        d = self.dialect
        if _is_constant(expr):
            return self.constant(evaluate(expr, {}))
        if isinstance(expr, ast.Property):
            if expr.name == "time":
                return Tagged({Kind.NUMBER: d.time_seconds()})
            if expr.name == "distinct_id":
                return Tagged({Kind.STRING: d.distinct_id()})
            return Tagged(d.property(expr.name))
        if isinstance(expr, ast.EventAttribute):
            if expr.name == "$time":
                return Tagged({Kind.DATETIME: d.event_time()})
            return Tagged({Kind.STRING: d.event_name()})
        if isinstance(expr, ast.Unary):
            operand = self.compile(expr.operand)
            if expr.op == "-":
                return _slots({Kind.NUMBER: _map(operand, Kind.NUMBER, lambda x: sql("(-{})", x))})
            return Tagged({Kind.BOOLEAN: self.not_(operand)})
        if isinstance(expr, ast.Call):
            return self.call(expr.function, [self.compile(arg) for arg in expr.args])
        assert isinstance(expr, ast.Binary)
        if expr.op in ("and", "or"):
            operands = [self.boolean(self.compile(e)) for e in ast.operands(expr)]
            joined = sql("(" + f" {expr.op.upper()} ".join(["{}"] * len(operands)) + ")", *operands)
            return Tagged({Kind.BOOLEAN: joined})
        left, right = self.compile(expr.left), self.compile(expr.right)
        if expr.op == "==":
            return Tagged({Kind.BOOLEAN: self.equals(left, right, self.container_depth)})
        if expr.op == "!=":
            same = self.equals(left, right, self.container_depth)
            return Tagged({Kind.BOOLEAN: sql("(NOT {})", same)})
        if expr.op == "in":
            return self.in_(left, right)
        if expr.op in (">", ">=", "<", "<="):
            terms = [
                sql(f"({{}} {expr.op} {{}})", left[kind], right[kind])
                for kind in (Kind.NUMBER, Kind.DATETIME)
                if left.has(kind) and right.has(kind)
            ]
            return _slots({Kind.BOOLEAN: _coalesce(terms)})
        return self.arithmetic(expr.op, left, right)

    # -- operations ------------------------------------------------------------------------

    def boolean(self, value: Tagged) -> Sql:
        """`boolean(x)` as a condition that is TRUE or FALSE, never NULL."""
        if value.is_constant:
            return TRUE if to_boolean(value.constant) else FALSE
        terms: list[Sql] = []
        for kind, slot in value.slots.items():
            if kind is Kind.BOOLEAN:
                terms.append(slot)
            elif kind is Kind.NUMBER:
                terms.append(sql("({} <> 0)", slot))
            elif kind is Kind.STRING:
                terms.append(self.dialect.is_true_text(slot))
            elif kind is Kind.LIST:
                terms.append(sql("({} > 0)", self.dialect.json_length(slot)))
            elif kind in (Kind.OBJECT, Kind.DATETIME):
                terms.append(sql("CASE WHEN {} IS NOT NULL THEN TRUE END", slot))
        return _true_or_false(_coalesce(terms) or FALSE)

    def defined(self, value: Tagged) -> Sql:
        present = [sql("({} IS NOT NULL)", s) for k, s in value.slots.items() if k is not Kind.NULL]
        return _any(present)

    def not_(self, value: Tagged) -> Sql:
        """Booleans negate; undefined and null give TRUE; anything else is undefined (NULL)."""
        others = [
            sql("{} IS NULL", slot)
            for kind, slot in value.slots.items()
            if kind not in (Kind.BOOLEAN, Kind.NULL)
        ]
        missing = TRUE
        if others:
            absent = " AND ".join(["{}"] * len(others))
            missing = sql(f"CASE WHEN {absent} THEN TRUE END", *others)
        if not value.has(Kind.BOOLEAN):
            return missing
        # coalesce reaches `missing` only when the boolean slot is NULL.
        return sql("coalesce(NOT {}, {})", value[Kind.BOOLEAN], missing)

    def equals(self, left: Tagged, right: Tagged, depth: int) -> Sql:
        """`==` as TRUE or FALSE. `depth`: how deep containers in the operands can nest."""
        if left.is_constant and right.is_constant:
            return TRUE if values_equal(left.constant, right.constant) else FALSE
        terms = _scalars_equal(left.slots, right.slots)
        a, b = self._canonical(left, depth), self._canonical(right, depth)
        if a is not None and b is not None:
            terms.append(_true_or_false(sql("({} = {})", a, b)))
        return _any(terms)

    def _canonical(self, value: Tagged, depth: int) -> Sql | None:
        """One text for a list or object value, equal exactly when `==` holds; None if the value
        is never a container. Lists and objects are told apart by their texts."""
        containers = [value[k] for k in (Kind.LIST, Kind.OBJECT) if value.has(k)]
        container = _coalesce(containers)
        return None if container is None else self.dialect.json_canonical(container, depth)

    def in_(self, needle: Tagged, haystack: Tagged) -> Tagged:
        if haystack.is_constant and isinstance(haystack.constant, list | tuple):
            return Tagged({Kind.BOOLEAN: self._in_constant_list(needle, haystack.constant)})
        substring = needle.has(Kind.STRING) and haystack.has(Kind.STRING)
        if not substring and not haystack.has(Kind.LIST):
            return Tagged({})
        d = self.dialect
        depth = self.container_depth - 1  # list elements sit one level down
        # The membership test runs inside a per-element function. Engines may copy whatever it
        # captures, so bind the operands to names and let it capture only those.
        scalars = [k for k in SCALARS if needle.has(k)]
        values = {k.value: needle[k] for k in scalars}
        canonical = self._canonical(needle, depth)
        if canonical is not None:
            values["canonical"] = canonical
        if substring:
            values["text"] = haystack[Kind.STRING]
        if haystack.has(Kind.LIST):
            values["items"] = haystack[Kind.LIST]

        def body(names: Mapping[str, Sql]) -> Sql:
            terms: list[Sql] = []
            if substring:
                terms.append(d.contains(names["text"], names[Kind.STRING.value]))
            if "items" in names:

                def member(item: Sql) -> Sql:
                    bound = {k: names[k.value] for k in scalars}
                    same = _scalars_equal(d.json_slots(item), bound)
                    if "canonical" in names:
                        text = d.json_canonical(item, depth)
                        same.append(_true_or_false(sql("({} = {})", text, names["canonical"])))
                    return _any(same)

                items = names["items"]
                found = d.json_any(items, member)
                terms.append(sql("CASE WHEN {} IS NOT NULL THEN coalesce({}, FALSE) END", items, found))
            result = _coalesce(terms)
            assert result is not None
            return result

        return Tagged({Kind.BOOLEAN: d.let(values, body)})

    def _in_constant_list(self, needle: Tagged, items: Sequence[Any]) -> Sql:
        """Membership in a literal list: one IN per scalar type, one comparison per container."""
        by_kind: dict[Kind, list[Value]] = {}
        for item in items:
            value = self.constant(item)
            for kind in value.slots:
                by_kind.setdefault(kind, []).append(item)
        terms: list[Sql] = []
        for kind in SCALARS:
            if needle.has(kind) and kind in by_kind:
                options = [self.constant(v)[kind] for v in dict.fromkeys(by_kind[kind])]
                terms.append(_true_or_false(self.dialect.one_of(needle[kind], options)))
        for kind in (Kind.LIST, Kind.OBJECT):
            if needle.has(kind):
                terms.extend(
                    self.equals(needle, self.constant(item), self.container_depth)
                    for item in by_kind.get(kind, [])
                )
        return _any(terms)

    def arithmetic(self, op: str, left: Tagged, right: Tagged) -> Tagged:
        d = self.dialect
        slots: dict[Kind, Sql | None] = {}
        if op == "+" and left.has(Kind.STRING) and right.has(Kind.STRING):
            slots[Kind.STRING] = sql("({} || {})", left[Kind.STRING], right[Kind.STRING])
        if left.has(Kind.NUMBER) and right.has(Kind.NUMBER):
            a, b = left[Kind.NUMBER], right[Kind.NUMBER]
            # Overflow gives an infinity and a zero divisor an infinity or NaN: both undefined.
            result = d.remainder(a, b) if op == "%" else sql(f"({{}} {op} {{}})", a, b)
            slots[Kind.NUMBER] = d.finite(result)
        return _slots(slots)

    def call(self, function: ast.Function, args: list[Tagged]) -> Tagged:
        d = self.dialect
        x = args[0]
        if function == "defined":
            return Tagged({Kind.BOOLEAN: self.defined(x)})
        if function == "boolean":
            return Tagged({Kind.BOOLEAN: self.boolean(x)})
        if function == "number":
            parts = [
                _map(x, Kind.NUMBER, lambda v: v),
                _map(x, Kind.STRING, d.parse_number),
                _map(x, Kind.BOOLEAN, d.boolean_to_number),
            ]
            return _slots({Kind.NUMBER: _coalesce([p for p in parts if p is not None])})
        if function == "string":
            parts = [
                _map(x, Kind.STRING, lambda v: v),
                _map(x, Kind.NUMBER, d.format_number),
                _map(x, Kind.BOOLEAN, d.boolean_to_string),
            ]
            text = _coalesce([p for p in parts if p is not None])
            return _slots({Kind.STRING: text, Kind.NULL: x.slots.get(Kind.NULL)})
        if function == "datetime":
            return _slots({Kind.DATETIME: _map(x, Kind.STRING, d.parse_datetime)})
        if function == "has_prefix":
            prefix = args[1]
            both = x.has(Kind.STRING) and prefix.has(Kind.STRING)
            test = d.starts_with(x[Kind.STRING], prefix[Kind.STRING]) if both else None
            return _slots({Kind.BOOLEAN: test})
        rounding = {"floor": d.floor, "ceil": d.ceil, "round": d.round_half_away}[function]
        return _slots({Kind.NUMBER: _map(x, Kind.NUMBER, rounding)})


def _map(value: Tagged, kind: Kind, fn: Callable[[Sql], Sql]) -> Sql | None:
    return fn(value[kind]) if value.has(kind) else None


def _slots(slots: Mapping[Kind, Sql | None]) -> Tagged:
    return Tagged({kind: slot for kind, slot in slots.items() if slot is not None})
