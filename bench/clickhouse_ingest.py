"""ClickHouse ingest benchmark: events/s through 1 and then 2 eventkeep servers.

Starts a local ClickHouse cluster of real `clickhouse-server` processes (two shards by
default, as tests/clickhouse_fixture.py does), then for each server count N starts N
`eventkeep serve --store clickhouse://…` processes on a fresh database, and has C clients post
gzip NDJSON batches of 2000 events to /import, alternating between the servers. Prints
events/s, request latency, and checks through an export that each distinct event is stored
exactly once (5% of the events are sent twice).

Everything runs on one machine: eventkeep, ClickHouse and the clients share its cores, so the
figures are a floor for a real deployment, where each has its own machines.

    python bench/clickhouse_ingest.py --events 400000 --clients 8 --servers 1 2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ServerProcess, machine
from bench.ingest import make_batches, percentile, run_clients
from tests.clickhouse_fixture import start_cluster


def eventkeep_server(store: str, workers: int) -> ServerProcess:
    return ServerProcess(None, "--store", store, "--workers", str(workers))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its waited-for children, from /proc."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (uvicorn workers)."""
    total = cpu_seconds(pid)
    for child in Path("/proc").iterdir():
        if child.name.isdigit():
            try:
                stat = (child / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    total += cpu_seconds(int(child.name))
            except (OSError, ValueError):
                continue
    return total


def count_exported(url: str, secret: str) -> int:
    lines = 0
    params = {"from_date": "1971-01-01", "to_date": "2100-01-01"}
    with httpx.stream("GET", url + "/api/2.0/export", params=params, auth=(secret, ""), timeout=600) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            lines += chunk.count(b"\n")
    return lines


def run_alternating(urls: list[str], secret: str, bodies: list[bytes], clients: int, time_limit: float) -> tuple[float, list[float], int]:
    """`bench.ingest.run_clients` against several servers: client i posts to server i mod N."""
    shares: list[list[bytes]] = [[] for _ in urls]
    for i, body in enumerate(bodies):
        shares[i % len(urls)].append(body)
    results: list[tuple[float, list[float], int]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        outcome = run_clients(urls[index], secret, shares[index], max(1, clients // len(urls)), time_limit)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies = [latency for _, lat, _ in results for latency in lat]
    return elapsed, latencies, sum(failed for _, _, failed in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2], help="eventkeep server counts to measure")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per eventkeep server")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=600, help="stop sending after this many seconds")
    args = parser.parse_args()

    if shutil.which("clickhouse-server") is None:
        raise SystemExit("clickhouse-server is not installed (apt-get install clickhouse-server)")
    bodies, distinct, _ = make_batches(args.events, args.batch)
    print(f"machine: {machine()}")
    print(f"ClickHouse: {args.shards} shard(s) on this machine; {args.events} events, {distinct} distinct, "
          f"batches of {args.batch}, {args.clients} clients")
    with tempfile.TemporaryDirectory(prefix="eventkeep-ch-bench-") as tmp:
        cluster = start_cluster(Path(tmp), shards=args.shards)
        try:
            for count in args.servers:
                store = cluster.store_url(f"bench_{uuid.uuid4().hex[:8]}", sharded=args.shards > 1)
                servers = [eventkeep_server(store, args.workers)]
                try:
                    servers += [eventkeep_server(store, args.workers) for _ in range(count - 1)]
                    secret = _secret(store)
                    ek_before = sum(tree_cpu_seconds(s.process.pid) for s in servers)
                    ch_before = sum(cpu_seconds(n.process.pid) for n in cluster.nodes if n.process)
                    elapsed, latencies, failures = run_alternating(
                        [s.url for s in servers], secret, bodies, args.clients, args.time_limit
                    )
                    ek_cpu = sum(tree_cpu_seconds(s.process.pid) for s in servers) - ek_before
                    ch_cpu = sum(cpu_seconds(n.process.pid) for n in cluster.nodes if n.process) - ch_before
                    started = time.perf_counter()
                    stored = count_exported(servers[-1].url, secret)
                    export_s = time.perf_counter() - started
                finally:
                    for server in servers:
                        server.stop()
                sent = len(latencies) * args.batch
                print(
                    f"{count} eventkeep server(s) x {args.workers} worker(s): {sent} events in {elapsed:.1f}s = "
                    f"{sent / elapsed:,.0f} events/s ({failures} failed requests); latency p50 "
                    f"{percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms; "
                    f"dedup: {stored} stored of {distinct} distinct -> {'exact' if stored == distinct else 'MISMATCH'}",
                    flush=True,
                )
                per_million = 1e6 / max(sent, 1)
                print(
                    f"  CPU per 1M events: eventkeep {ek_cpu * per_million:.0f} s, ClickHouse {ch_cpu * per_million:.0f} s; "
                    f"export (FINAL, through a server): {stored / export_s:,.0f} events/s",
                    flush=True,
                )
        finally:
            cluster.stop()


def _secret(store: str) -> str:
    """The API secret of the project the first server created."""
    from eventkeep.projects.clickhouse import ClickHouseRegistry
    from eventkeep.store.clickhouse_schema import ClickHouseTarget

    registry = ClickHouseRegistry(ClickHouseTarget.parse(store))
    try:
        return registry.list_projects()[0].secret
    finally:
        registry.close()


if __name__ == "__main__":
    main()
