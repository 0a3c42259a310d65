"""The DuckDB dialect of the `where` compiler, for the `events` table of `store/duckdb.py`.

Property values are read from the `properties` JSON text with JSON Pointer paths passed as
parameters, so any property name (quotes, dots, `$`, brackets, backslashes, NUL) is safe.
`time` and `distinct_id` are not in that JSON: they come from the `time_ms` and `distinct_id`
columns. DuckDB's JSON reader keeps integers beyond 64 bits as doubles and casts integers to
the nearest double, matching the spec's 64-bit numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from eventkeep.query import ast
from eventkeep.query.evaluate import DATETIME_TEXT, NUMBER_TEXT
from eventkeep.query.sqlgen import Compiler, Kind, Sql, sql

_NUMBER_TYPES = "('BIGINT', 'UBIGINT', 'DOUBLE')"
_NAME = re.compile(r"[a-z]+[0-9]+(?:\.[a-z]+)?")  # a lambda parameter or a field of one


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def json_pointer(name: str) -> str:
    """RFC 6901: the only characters a pointer escapes are `~` and `/`."""
    return "/" + name.replace("~", "~0").replace("/", "~1")


def _json_slots(json_type: Sql, extract: Sql, extract_string: Sql) -> dict[Kind, Sql]:
    """Slots of a JSON value, given how to read its type, itself and its string content."""
    return {
        Kind.STRING: sql("CASE WHEN {} = 'VARCHAR' THEN {} END", json_type, extract_string),
        Kind.NUMBER: sql(
            f"CASE WHEN {{}} IN {_NUMBER_TYPES} THEN TRY_CAST({{}} AS DOUBLE) END", json_type, extract
        ),
        Kind.BOOLEAN: sql("CASE WHEN {} = 'BOOLEAN' THEN TRY_CAST({} AS BOOLEAN) END", json_type, extract),
        Kind.NULL: sql("CASE WHEN {} = 'NULL' THEN TRUE END", json_type),
        Kind.LIST: sql("CASE WHEN {} = 'ARRAY' THEN {} END", json_type, extract),
        Kind.OBJECT: sql("CASE WHEN {} = 'OBJECT' THEN {} END", json_type, extract),
    }


class DuckDBDialect:
    """SQL for DuckDB 1.3+ (Python-style lambdas). One instance per compilation."""

    def __init__(self) -> None:
        self._names = 0

    def _name(self, stem: str) -> str:
        """A lambda parameter name unused anywhere else in this compilation."""
        self._names += 1
        return f"{stem}{self._names}"

    # -- constants and columns ------------------------------------------------------------

    def string(self, value: str) -> Sql:
        return Sql("CAST(? AS VARCHAR)", (value,))

    def number(self, value: float) -> Sql:
        return Sql("CAST(? AS DOUBLE)", (value,))

    def datetime(self, micros: int) -> Sql:
        return Sql("CAST(? AS BIGINT)", (micros,))

    def json(self, value: Any) -> Sql:
        return Sql("CAST(? AS JSON)", (msgspec.json.encode(value).decode(),))

    def property(self, name: str) -> dict[Kind, Sql]:
        path = Sql("CAST(? AS VARCHAR)", (json_pointer(name),))
        return _json_slots(
            sql("json_type(properties, {})", path),
            sql("json_extract(properties, {})", path),
            sql("json_extract_string(properties, {})", path),
        )

    def time_seconds(self) -> Sql:
        return Sql("(CAST(time_ms AS DOUBLE) / CAST(1000 AS DOUBLE))")

    def distinct_id(self) -> Sql:
        return Sql("distinct_id")

    def event_time(self) -> Sql:
        return Sql("(time_ms * 1000)")

    def event_name(self) -> Sql:
        return Sql("event")

    # -- JSON values ----------------------------------------------------------------------

    def json_slots(self, value: Sql) -> dict[Kind, Sql]:
        return _json_slots(
            sql("json_type({})", value), value, sql("json_extract_string({}, '$')", value)
        )

    def json_length(self, array: Sql) -> Sql:
        return sql("json_array_length({})", array)

    def json_any(self, array: Sql, test: Callable[[Sql], Sql]) -> Sql:
        item = self._name("e")
        return sql(
            f"list_bool_or(list_transform(json_extract({{}}, '$[*]'), lambda {item}: {{}}))",
            array,
            test(Sql(item)),
        )

    def json_canonical(self, value: Sql, depth: int) -> Sql:
        if not _NAME.fullmatch(value.text):
            return self.let({"j": value}, lambda names: self.json_canonical(names["j"], depth))
        # Strings as JSON text, numbers as the shortest text of their double ('0' for ±0),
        # booleans as true/false; a container as its opening bracket and the sorted
        # `key:text` of its children (arrays keyed by index: sorting them is harmless).
        # `||` with a NULL child makes the whole text NULL, as a null makes `==` false.
        kind = sql("json_type({})", value)
        number = sql("TRY_CAST({} AS DOUBLE)", value)
        text = sql(
            "CASE WHEN {} = 'VARCHAR' THEN CAST(to_json(json_extract_string({}, '$')) AS VARCHAR) "
            "WHEN {} = 'BOOLEAN' THEN CAST(TRY_CAST({} AS BOOLEAN) AS VARCHAR) "
            f"WHEN {{}} IN {_NUMBER_TYPES} THEN "
            "CASE WHEN {} = 0 THEN '0' ELSE CAST({} AS VARCHAR) END",
            kind, value, kind, value, kind, number, number,
        )
        if depth > 0:
            item, index, member, entry, acc, nxt = (self._name(n) for n in "vimeab")
            entries = sql(
                f"CASE WHEN {{}} = 'ARRAY' THEN list_transform(json_extract({{}}, '$[*]'), "
                f"lambda {item}, {index}: struct_pack(k := CAST({index} AS VARCHAR) || ':', "
                f"v := {item})) "
                f"ELSE list_transform(list_zip(json_keys({{}}), json_extract({{}}, '$.*')), "
                f"lambda {member}: struct_pack(k := CAST(to_json({member}[1]) AS VARCHAR) || ':', v := {member}[2])) END",
                kind, value, value, value,
            )
            child = self.json_canonical(Sql(f"{entry}.v"), depth - 1)
            joined = sql(
                f"list_reduce(list_prepend('', list_sort(list_transform({{}}, "
                f"lambda {entry}: {entry}.k || {{}}))), lambda {acc}, {nxt}: {acc} || ',' || {nxt})",
                entries, child,
            )
            text = sql(
                "{} WHEN {} IN ('ARRAY', 'OBJECT') THEN "
                "CASE WHEN {} = 'ARRAY' THEN '[' ELSE '{' END || {} || ']'",
                text, kind, kind, joined,
            )
        return sql("{} END", text)

    # -- numbers, strings, times ----------------------------------------------------------

    def let(self, values: Mapping[str, Sql], body: Callable[[Mapping[str, Sql]], Sql]) -> Sql:
        # A one-element list_transform binds a name. Each bound expression is written once:
        # DuckDB copies an expression wherever it is used or captured, so nesting that repeats
        # or captures anything but names grows exponentially.
        name = self._name("x")
        if len(values) == 1:
            [value] = values.values()
            names = {key: Sql(name) for key in values}
            return sql(f"list_transform([{{}}], lambda {name}: {{}})[1]", value, body(names))
        fields = ", ".join(f"{key} := {{}}" for key in values)
        names = {key: Sql(f"{name}.{key}") for key in values}
        return sql(
            f"list_transform([struct_pack({fields})], lambda {name}: {{}})[1]",
            *values.values(),
            body(names),
        )

    def finite(self, number: Sql) -> Sql:
        return self.let({"n": number}, lambda v: sql("CASE WHEN isfinite({}) THEN {} END", v["n"], v["n"]))

    def remainder(self, dividend: Sql, divisor: Sql) -> Sql:
        return sql("({} % {})", dividend, divisor)  # fmod for doubles (not the fmod() function)

    def floor(self, number: Sql) -> Sql:
        return sql("floor({})", number)

    def ceil(self, number: Sql) -> Sql:
        return sql("ceil({})", number)

    def round_half_away(self, number: Sql) -> Sql:
        return sql("round({})", number)  # C's round(): halves away from zero

    # DuckDB's optimizer takes time exponential in the nesting of IN lists (and list_contains)
    # in projections: keep each one's operand a bound name.

    def is_true_text(self, text: Sql) -> Sql:
        return sql("(NOT regexp_full_match({}, '|false'))", text)

    def one_of(self, value: Sql, options: Sequence[Sql]) -> Sql:
        listed = ", ".join(["{}"] * len(options))
        return self.let({"v": value}, lambda v: sql(f"({{}} IN ({listed}))", v["v"], *options))

    def contains(self, haystack: Sql, needle: Sql) -> Sql:
        return sql("contains({}, {})", haystack, needle)

    def starts_with(self, text: Sql, prefix: Sql) -> Sql:
        return sql("starts_with({}, {})", text, prefix)

    def parse_number(self, text: Sql) -> Sql:
        pattern = _quote("^" + NUMBER_TEXT + "$")
        return self.finite(sql(f"TRY_CAST(regexp_extract({{}}, {pattern}, 1) AS DOUBLE)", text))

    def parse_datetime(self, text: Sql) -> Sql:
        # The pattern admits only real times of day; TRY_CAST rejects days the calendar lacks.
        pattern = _quote("^" + DATETIME_TEXT + "$")
        return sql(
            "epoch_us(TRY_CAST(regexp_extract({}, " + pattern + ", 1) AS TIMESTAMP))", text
        )

    def format_number(self, number: Sql) -> Sql:
        # DuckDB prints doubles as Python's repr does (shortest round-trip digits); take its
        # digits and decimal exponent and lay them out as JavaScript does.
        t, r = self._name("t"), self._name("r")
        whole = f"regexp_extract({t}, '^-?([0-9]+)', 1)"
        digits = f"({whole} || regexp_extract({t}, '\\.([0-9]+)', 1))"
        exponent = f"coalesce(TRY_CAST(regexp_extract({t}, 'e([+-][0-9]+)$', 1) AS INTEGER), 0)"
        significant = f"ltrim({digits}, '0')"
        parts = (
            f"struct_pack(d := rtrim({significant}, '0'), "
            f"n := length({whole}) + {exponent} - (length({digits}) - length({significant})), "
            f"neg := starts_with({t}, '-'))"
        )
        d, n, k = f"{r}.d", f"{r}.n", f"length({r}.d)"
        layout = (
            f"CASE WHEN {d} IS NULL THEN NULL WHEN {d} = '' THEN '0' "
            f"ELSE CASE WHEN {r}.neg THEN '-' ELSE '' END || CASE "
            f"WHEN {k} <= {n} AND {n} <= 21 THEN {d} || repeat('0', {n} - {k}) "
            f"WHEN 0 < {n} AND {n} <= 21 THEN left({d}, {n}) || '.' || substr({d}, {n} + 1) "
            f"WHEN -6 < {n} AND {n} <= 0 THEN '0.' || repeat('0', -{n}) || {d} "
            f"ELSE left({d}, 1) || CASE WHEN {k} > 1 THEN '.' || substr({d}, 2) ELSE '' END "
            f"|| 'e' || CASE WHEN {n} - 1 >= 0 THEN '+' ELSE '-' END || CAST(abs({n} - 1) AS VARCHAR) "
            f"END END"
        )
        return sql(
            f"list_transform([CAST({{}} AS VARCHAR)], lambda {t}: "
            f"list_transform([{parts}], lambda {r}: {layout})[1])[1]",
            number,
        )

    def boolean_to_string(self, value: Sql) -> Sql:
        return sql("CAST({} AS VARCHAR)", value)  # 'true' / 'false'

    def boolean_to_number(self, value: Sql) -> Sql:
        return sql("CAST({} AS DOUBLE)", value)


def compile_where(expr: ast.Expr) -> tuple[str, list[Any]]:
    """A DuckDB condition over `events`, TRUE exactly when `evaluate.matches`; never NULL.

    Returns the SQL and its positional `?` parameters.
    """
    condition = Compiler(DuckDBDialect()).where(expr)
    return condition.text, list(condition.params)
