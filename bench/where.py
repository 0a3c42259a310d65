"""Filtered-export benchmark: `/api/2.0/export` with `where` and `event` filters.

Loads N realistic events into a data directory the way bench/export.py does, starts a server on
it and streams the export over HTTP with: no filter; a selective `where` (about 1% of events);
a non-selective `where` (about 90%); and an `event=[…]` list (2 of the 7 names, about 29%).
Prints rows returned, events/s (rows out over wall time; also the stored events scanned per
second), time to first byte, and each filtered
run's wall time as a ratio to the unfiltered run's. Every row count is checked against a count
made in plain Python over the same generated events, so a filter that selects the wrong events
fails the run.

    python bench/where.py --events 1000000
    python bench/where.py --events 50000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ServerProcess, machine, realistic_events, store_events
from eventkeep.projects.sqlite import SQLiteRegistry
from eventkeep.store.duckdb import DuckDBStore

Event = dict[str, Any]


@dataclass(frozen=True)
class Filter:
    name: str
    params: dict[str, str]
    matches: Callable[[Event], bool]  # the same selection, written independently in Python


def _number(value: object) -> bool:
    return type(value) in (int, float)


FILTERS = [
    Filter("no filter", {}, lambda e: True),
    Filter("where, ~1%",
           {"where": 'properties["country"] == "JP" and properties["price"] < 14'},
           lambda e: e["properties"]["country"] == "JP" and _number(e["properties"]["price"])
           and e["properties"]["price"] < 14),
    Filter("where, ~90%",
           {"where": 'properties["plan"] != "free" or properties["price"] >= 80'},
           lambda e: e["properties"]["plan"] != "free"
           or (_number(e["properties"]["price"]) and e["properties"]["price"] >= 80)),
    Filter("event list, ~29%",
           {"event": json.dumps(["Purchased", "Signed Up"])},
           lambda e: e["event"] in ("Purchased", "Signed Up")),
]


def load(data_dir: Path, count: int) -> tuple[str, list[int]]:
    """Store the events (as bench/export.py does); return the secret and each filter's count."""
    registry = SQLiteRegistry(data_dir / "projects.sqlite3")
    project = registry.create_project("bench")
    registry.close()
    store = DuckDBStore(data_dir / "events.duckdb")
    expected = [0] * len(FILTERS)

    def counted(events: Iterator[Event]) -> Iterator[Event]:
        for event in events:
            for i, f in enumerate(FILTERS):  # before validation, which may touch the dicts
                expected[i] += f.matches(event)
            yield event

    store_events(store, project.id, counted(realistic_events(count)))
    store.close()
    return project.secret, expected


@dataclass
class Run:
    rows: int
    wall: float
    first_byte: float
    complete: bool


def stream(url: str, secret: str, extra: dict[str, str], time_limit: float) -> Run:
    params = {"from_date": "2023-01-01", "to_date": "2024-12-31", **extra}
    rows = 0
    first_byte: float | None = None
    complete = True
    started = time.perf_counter()
    deadline = started + time_limit
    with httpx.stream("GET", url + "/api/2.0/export", params=params, auth=(secret, ""),
                      headers={"Accept-Encoding": "identity"}, timeout=time_limit) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            rows += chunk.count(b"\n")
            if time.perf_counter() > deadline:
                complete = False
                break
    wall = time.perf_counter() - started
    # An empty body: the whole (empty) answer counts as the first byte.
    return Run(rows, wall, wall if first_byte is None else first_byte, complete)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each filter; the fastest is reported")
    parser.add_argument("--time-limit", type=float, default=600, help="seconds one export may take")
    parser.add_argument("--memory-limit", help="passed to `eventkeep serve --memory-limit`")
    args = parser.parse_args()
    results: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="eventkeep-bench-") as tmp:
        data_dir = Path(tmp)
        started = time.perf_counter()
        secret, expected = load(data_dir, args.events)
        print(f"loaded {args.events} events in {time.perf_counter() - started:.1f}s", flush=True)
        server = ServerProcess(data_dir, *(["--memory-limit", args.memory_limit] if args.memory_limit else []))
        try:
            for f in FILTERS:
                runs = [stream(server.url, secret, f.params, args.time_limit) for _ in range(max(1, args.repeat))]
                results.append(min(runs, key=lambda r: r.wall))
        finally:
            server.stop()

    print(f"machine: {machine()}")
    base = results[0].wall
    print(f"{'filter':<18}{'rows':>10}{'share':>7}{'wall s':>9}{'rows/s':>12}{'scanned/s':>12}{'1st byte s':>11}"
          f"{'vs none':>9}  check")
    ok = True
    for f, run, want in zip(FILTERS, results, expected, strict=True):
        good = run.complete and run.rows == want
        ok = ok and good
        check = "exact" if good else (f"STOPPED at {args.time_limit:.0f}s" if not run.complete
                                      else f"MISMATCH: expected {want}")
        print(f"{f.name:<18}{run.rows:>10}{run.rows / args.events:>7.1%}{run.wall:>9.2f}{run.rows / run.wall:>12,.0f}"
              f"{args.events / run.wall:>12,.0f}{run.first_byte:>11.3f}{run.wall / base:>9.2f}  {check}")
    for f in FILTERS[1:]:
        print(f"  {f.name}: {' '.join(f'{k}={v}' for k, v in f.params.items())}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
