"""Duplicates benchmark: what re-sent events cost the embedded store.

A re-sent event (same project, event, distinct_id, time and `$insert_id`) replaces the
stored copy: the latest ingested copy wins (docs/decisions.md). The writer deletes the
stored row and appends the new copy, which costs more than appending alone, and where the
stored copies lie (recent, or scattered over the table) decides how much DuckDB must touch.
One server, four loads of N events each by N clients, with an idle pause after each (the
writer checkpoints):

1. N new events (the store's first N);
2. N more new events: the reference, new events into a store of N;
3. N events of which 5% re-send random events of load 1 (scattered over the table);
4. load 1 again, in its order (a re-import of the same file).

Each load's events are in time order within a time span of their own, so the idle server
has nothing to cluster between loads. Prints each load's acknowledged and applied rates,
the ratios of loads 3 and 4 to load 2, and checks the stored count against the distinct
events sent.

    python bench/duplicates.py --events 300000
    python bench/duplicates.py --events 300000 --first 3000000
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ServerProcess, machine, realistic_events
from bench.ingest import percentile, run_clients

SPAN_S = 30 * 86400


def in_time_order(count: int, seed: int, start_s: int) -> list[dict[str, Any]]:
    events = list(realistic_events(count, seed=seed, start_s=start_s, span_s=SPAN_S))
    events.sort(key=lambda e: e["properties"]["time"])
    return events


def bodies(events: list[dict[str, Any]], batch: int) -> list[bytes]:
    return [gzip.compress(b"\n".join(map(orjson.dumps, events[i : i + batch])), 1) for i in range(0, len(events), batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000, help="events in loads 2, 3 and 4")
    parser.add_argument("--first", type=int, help="events in load 1 (default: --events)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--pause", type=float, default=5.0, help="idle seconds after each load")
    parser.add_argument("--time-limit", type=float, default=600, help="stop sending a load after this many seconds")
    args = parser.parse_args()

    n = args.events
    first = in_time_order(args.first or n, 11, 1_600_000_000)
    second = in_time_order(n, 12, 1_600_000_000 + SPAN_S)
    third = in_time_order(n, 13, 1_600_000_000 + 2 * SPAN_S)
    rng = random.Random(3)
    resent = 0
    for i in range(n):
        if rng.random() < 0.05:
            third[i] = rng.choice(first)
            resent += 1
    distinct = len({orjson.dumps(e) for e in first + second + third})
    loads = [
        ("1. new events", first),
        ("2. new events (reference)", second),
        (f"3. {resent / n:.0%} re-send scattered events of load 1", third),
        ("4. load 1's first events again, in order", first[:n]),
    ]
    rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="eventkeep-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "data")
        try:
            secret = server.secret()
            print(f"machine: {machine()}")
            for label, events in loads:
                work = bodies(events, args.batch)
                started = time.perf_counter()
                elapsed, latencies, failures = run_clients(server.url, secret, work, args.clients, args.time_limit)
                server.wait_applied(secret)
                applied = time.perf_counter() - started
                sent = len(latencies) * args.batch
                rates.append(sent / applied)
                print(f"{label}: {sent:,} events, acknowledged {sent / elapsed:,.0f} events/s, applied "
                      f"{sent / applied:,.0f} events/s; p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
                      f"max {max(latencies) * 1000:.0f} ms ({failures} failed requests)", flush=True)
                time.sleep(args.pause)
            stored = server.count(secret)
        finally:
            server.stop()
    print(f"applied rate / reference: scattered re-sends {rates[2] / rates[1]:.2f}, re-import in order {rates[3] / rates[1]:.2f}")
    print(f"dedup: {stored} stored, {distinct} distinct sent -> {'exact' if stored == distinct else 'MISMATCH'}")


if __name__ == "__main__":
    main()
