"""Export benchmark: stream N stored events as JSONL over HTTP; peak server RSS.

Reference in the same run: DuckDB's own `COPY (SELECT … the same lines …) TO file`.

The events are spread at random over 30 days, so as imported they are stored in no time
order; loading ends with the clustering an idle server would do (its time is printed and
included in "loaded … in"). `--no-cluster` exports them as imported instead.

    python bench/export.py --events 1000000 [--memory-limit 128MB] [--no-cluster]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ServerProcess, machine, realistic_events, store_events
from eventkeep.projects.sqlite import SQLiteRegistry
from eventkeep.store.duckdb import DuckDBStore


def load(data_dir: Path, count: int, *, cluster: bool = True) -> tuple[int, str]:
    """Import `count` events (in random time order), then, unless told not to, do what an
    idle server does next: cluster them by time (eventkeep/store/duckdb_cluster.py)."""
    registry = SQLiteRegistry(data_dir / "projects.sqlite3")
    project = registry.create_project("bench")
    store = DuckDBStore(data_dir / "events.duckdb")
    store_events(store, project.id, realistic_events(count))
    if cluster:
        started = time.perf_counter()
        moved = store.cluster()
        print(f"clustered by time: moved {moved} events in {time.perf_counter() - started:.1f}s")
    store.close()
    return project.id, project.secret


def reference_copy(data_dir: Path, project_id: int) -> float:
    con = duckdb.connect(str(data_dir / "events.duckdb"), read_only=True)
    out = data_dir / "copy.jsonl"
    started = time.perf_counter()
    con.execute(f"""
        COPY (SELECT '{{"event":' || to_json(event) || ',"properties":{{"time":' || (time_ms // 1000)
              || ',"distinct_id":' || to_json(distinct_id) || ',' || substr(properties, 2) || '}}'
              FROM events WHERE project_id = {project_id} ORDER BY time_ms)
        TO '{out}' (FORMAT CSV, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x01')""")
    elapsed = time.perf_counter() - started
    con.close()
    out.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--gzip", action="store_true", help="ask for gzip (Accept-Encoding)")
    parser.add_argument("--memory-limit", help="passed to `eventkeep serve --memory-limit`")
    parser.add_argument("--no-cluster", action="store_true",
                        help="export the events as imported, not clustered by time first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eventkeep-bench-") as tmp:
        data_dir = Path(tmp)
        started = time.perf_counter()
        project_id, secret = load(data_dir, args.events, cluster=not args.no_cluster)
        print(f"loaded {args.events} events in {time.perf_counter() - started:.1f}s")
        copy_s = reference_copy(data_dir, project_id)
        server = ServerProcess(data_dir, *(["--memory-limit", args.memory_limit] if args.memory_limit else []))
        try:
            rss_before = server.rss_mb("VmRSS")
            headers = {"Accept-Encoding": "gzip" if args.gzip else "identity"}
            params = {"from_date": "2023-01-01", "to_date": "2024-12-31"}
            lines = 0
            started = time.perf_counter()
            first_byte = None
            with httpx.stream("GET", server.url + "/api/2.0/export", params=params, auth=(secret, ""),
                              headers=headers, timeout=600) as response:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    if first_byte is None:
                        first_byte = time.perf_counter() - started
                    lines += chunk.count(b"\n")
            elapsed = time.perf_counter() - started
            peak = server.rss_mb("VmHWM")
        finally:
            server.stop()
    assert lines == args.events, f"exported {lines} lines, expected {args.events}"
    rate = lines / elapsed
    ref_rate = args.events / copy_s
    print(f"machine: {machine()}")
    print(f"export: {lines} events in {elapsed:.2f}s = {rate:,.0f} events/s; first byte after {first_byte:.3f}s")
    print(f"server RSS: {rss_before:.0f} MB before, peak {peak:.0f} MB")
    print(f"reference DuckDB COPY: {ref_rate:,.0f} events/s; ratio export/COPY = {rate / ref_rate:.2f}")


if __name__ == "__main__":
    main()
