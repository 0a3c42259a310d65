"""A real DuckDB `events` table filled the way the store fills it, to run compiled filters on."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import msgspec

from eventkeep.query import ast
from eventkeep.query.duckdb_sql import DuckDBDialect, compile_where
from eventkeep.query.evaluate import UNDEFINED, DateTime, Value, evaluate
from eventkeep.query.sqlgen import Compiler, Kind, Sql, sql

SCHEMA = """
CREATE TABLE events (
    key UHUGEINT PRIMARY KEY, project_id INTEGER NOT NULL, event VARCHAR NOT NULL,
    distinct_id VARCHAR NOT NULL, time_ms BIGINT NOT NULL, insert_id VARCHAR NOT NULL,
    ingested_ms BIGINT NOT NULL, properties VARCHAR NOT NULL
)
"""

Event = dict[str, Any]


def event(name: str = "e", time_ms: int = 1_700_000_000_000, distinct_id: str = "u", **props: Any) -> Event:
    """An event as the evaluator sees it (and export writes it): time in seconds."""
    return {"event": name, "properties": {"time": time_ms / 1000, "distinct_id": distinct_id, **props}}


class EventTable:
    """One in-memory DuckDB database holding one `events` table."""

    def __init__(self, events: Sequence[Event] = ()) -> None:
        self.con = duckdb.connect(":memory:")
        self.con.execute(SCHEMA)
        self.events: list[Event] = []
        self.insert(events)

    def insert(self, events: Sequence[Event]) -> None:
        rows = []
        for e in events:
            props = e["properties"]
            stored = {k: v for k, v in props.items() if k not in ("time", "distinct_id")}
            rows.append(
                (
                    len(self.events),
                    1,
                    e["event"],
                    props["distinct_id"],
                    round(props["time"] * 1000),
                    str(len(self.events)),
                    0,
                    msgspec.json.encode(stored).decode(),
                )
            )
            self.events.append(e)
        if rows:
            self.con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def clear(self) -> None:
        self.con.execute("DELETE FROM events")
        self.events = []

    def selected(self, expr: ast.Expr) -> list[int]:
        """Indexes of the events the compiled WHERE selects."""
        where, params = compile_where(expr)
        rows = self.con.execute(f"SELECT key FROM events WHERE {where} ORDER BY key", params).fetchall()
        return [int(row[0]) for row in rows]

    def values(self, exprs: Sequence[ast.Expr]) -> list[list[Any]]:
        """For each expression, its compiled value for every event, read back from the typed
        slots and `typed`; all in one query."""
        columns: list[Sql] = []
        layout: list[list[Kind]] = []
        for expr in exprs:
            tagged = Compiler(DuckDBDialect()).compile(expr)
            layout.append(list(tagged.slots))
            for kind, slot in tagged.slots.items():
                columns.append(sql("CAST({} AS VARCHAR)", slot) if kind in (Kind.LIST, Kind.OBJECT) else slot)
        select = _columns([Sql("key"), *columns])
        rows = self.con.execute(
            f"SELECT {select.text} FROM events ORDER BY key", list(select.params)
        ).fetchall()
        results = []
        column = 1
        for kinds in layout:
            results.append([typed(_read(kinds, row[column : column + len(kinds)])) for row in rows])
            column += len(kinds)
        return results

    def conditions(self, exprs: Sequence[ast.Expr]) -> list[list[bool | None]]:
        """For each expression, its compiled WHERE condition evaluated for every event."""
        compiled = [compile_where(expr) for expr in exprs]
        select = _columns([Sql("key"), *(Sql(text, tuple(params)) for text, params in compiled)])
        rows = self.con.execute(
            f"SELECT {select.text} FROM events ORDER BY key", list(select.params)
        ).fetchall()
        return [[row[i + 1] for row in rows] for i in range(len(exprs))]


def _columns(columns: Sequence[Sql]) -> Sql:
    return sql(", ".join(["{}"] * len(columns)), *columns)


def _read(kinds: list[Kind], cells: Sequence[Any]) -> Value:
    present = [(kind, cell) for kind, cell in zip(kinds, cells, strict=True) if cell is not None]
    assert len(present) <= 1, f"a value of several types at once: {present}"
    if not present:
        return UNDEFINED
    kind, cell = present[0]
    if kind is Kind.NULL:
        return None
    if kind is Kind.DATETIME:
        return DateTime(int(cell))
    if kind in (Kind.LIST, Kind.OBJECT):
        return json.loads(cell)
    if kind is Kind.NUMBER:
        return float(cell)
    return cell


def typed(value: Any) -> Any:
    """A value as (type, content): exact comparison that never mistakes True for 1.0."""
    if value is UNDEFINED:
        return ("undefined",)
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, DateTime):
        return ("datetime", value.micros)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, list | tuple):
        return ("list", [typed(v) for v in value])
    assert isinstance(value, Mapping), value
    return ("object", {k: typed(v) for k, v in value.items()})


def expected_values(expr: ast.Expr, events: Sequence[Event]) -> list[Any]:
    return [typed(evaluate(expr, e)) for e in events]
