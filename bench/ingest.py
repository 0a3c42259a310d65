"""Ingest benchmark: N concurrent clients posting gzip NDJSON batches of 2000 events to /import.

Prints events/s, request latency percentiles, server peak RSS, and the ratio to DuckDB's own
`read_ndjson` loading the same events into an equivalent table on the same machine (and,
for comparison, into eventkeep's own table, one copy of each event by its dedup key), then
checks that the stored count equals the number of distinct events sent (exact dedup).

    python bench/ingest.py --events 1000000 --clients 8
"""

from __future__ import annotations

import argparse
import gzip
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ServerProcess, machine, realistic_events
from eventkeep.store.duckdb import KEY_SQL, SCHEMA


def make_batches(count: int, batch_size: int) -> tuple[list[bytes], int, bytes]:
    """Gzip NDJSON bodies, the number of distinct events, and the raw NDJSON for the reference."""
    lines: list[bytes] = []
    keys: set[tuple[object, ...]] = set()
    for event in realistic_events(count, duplicate_share=0.05):
        p = event["properties"]
        keys.add((event["event"], p["distinct_id"], p["time"], p["$insert_id"]))
        lines.append(orjson.dumps(event))
    bodies = [gzip.compress(b"\n".join(lines[i : i + batch_size]), 1) for i in range(0, len(lines), batch_size)]
    return bodies, len(keys), b"\n".join(lines)


def reference_read_ndjson(ndjson: bytes, workdir: Path) -> tuple[float, float]:
    """Seconds for DuckDB to load the events with `read_ndjson`: into a plain table (the
    reference of the target), and into eventkeep's own table, keeping one copy of each
    event by its MD5 dedup key (the same job as the server's, minus HTTP and Mixpanel's
    checks)."""
    source = workdir / "events.ndjson"
    source.write_bytes(ndjson)
    columns = """event, properties->>'$.distinct_id' AS distinct_id,
               (properties->>'$.time')::BIGINT * 1000 AS time_ms,
               properties->>'$."$insert_id"' AS insert_id"""
    read = f"read_ndjson('{source}', columns = {{event: 'VARCHAR', properties: 'JSON'}})"
    plain = f"CREATE TABLE events AS SELECT {columns}, properties::JSON AS properties FROM {read}"
    deduplicating = f"""
        INSERT INTO events
        SELECT row_number() OVER () AS seq, project_id, event, distinct_id, time_ms, insert_id, 0, properties
        FROM (SELECT 1 AS project_id, {columns}, properties::VARCHAR AS properties FROM {read})
        QUALIFY row_number() OVER (PARTITION BY {KEY_SQL}) = 1"""
    timings = []
    for name, statements in (("plain", [plain]), ("keyed", [SCHEMA, deduplicating])):
        path = workdir / f"reference-{name}.duckdb"
        con = duckdb.connect(str(path))
        started = time.perf_counter()
        for statement in statements:
            con.execute(statement)
        con.execute("CHECKPOINT")
        timings.append(time.perf_counter() - started)
        con.close()
        path.unlink()  # its pages, written back while the server runs, would slow its fsyncs
    source.unlink()
    os.sync()
    return timings[0], timings[1]


def run_clients(url: str, secret: str, bodies: list[bytes], clients: int, time_limit: float) -> tuple[float, list[float], int]:
    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def client() -> None:
        nonlocal failures
        headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
        with httpx.Client(base_url=url, auth=(secret, ""), headers=headers, timeout=60) as http:
            while time.monotonic() < deadline:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                response = http.post("/import", params={"strict": "1"}, content=body)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code != 200:
                        failures += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, latencies, failures


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--time-limit", type=float, default=600, help="stop sending after this many seconds")
    args = parser.parse_args()

    bodies, distinct, ndjson = make_batches(args.events, args.batch)
    with tempfile.TemporaryDirectory(prefix="eventkeep-bench-") as tmp:
        workdir = Path(tmp)
        reference_s, keyed_s = reference_read_ndjson(ndjson, workdir)
        del ndjson
        data_dir = workdir / "data"
        server = ServerProcess(data_dir)
        try:
            secret = server.secret()
            started = time.perf_counter()
            elapsed, latencies, failures = run_clients(server.url, secret, bodies, args.clients, args.time_limit)
            server.wait_applied(secret)
            applied = time.perf_counter() - started
            peak = server.rss_mb("VmHWM")
            stored = server.count(secret)
        finally:
            server.stop()
    sent = len(latencies) * args.batch
    rate = sent / elapsed
    reference_rate = args.events / reference_s
    print(f"machine: {machine()}")
    print(f"ingest: {sent} events in {elapsed:.1f}s with {args.clients} clients = {rate:,.0f} events/s ({failures} failed requests)")
    print(f"sustained (until every acknowledged event was queryable, {applied - elapsed:.1f}s after the last answer): "
          f"{sent / applied:,.0f} events/s")
    print(f"latency per {args.batch}-event request: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print(f"server peak RSS: {peak:.0f} MB")
    print(f"reference read_ndjson: {reference_rate:,.0f} events/s; ratio ingest/reference = {rate / reference_rate:.2f}")
    keyed_rate = args.events / keyed_s
    print(f"read_ndjson into eventkeep's table (one copy of each by its dedup key): {keyed_rate:,.0f} events/s; "
          f"ratio ingest/that = {rate / keyed_rate:.2f}")
    print(f"dedup: {stored} stored, {distinct} distinct sent -> {'exact' if stored == distinct else 'MISMATCH'}")


if __name__ == "__main__":
    main()
