"""Scale-out acceptance: two eventkeep servers in front of a two-shard ClickHouse cluster.

- A client alternating between the servers imports 200,000 events, 5% of them sent twice;
  an export through either server returns each event exactly once.
- A shard is stopped in the middle of an import: the client gets 503s and retries; no request
  is answered 200 unless its events were stored (a 200'd batch is never sent again, so a lie
  would show as a missing event); after the restart every event is there exactly once.
- `--workers 2` serves from two processes on one port.

The cluster here is this module's own (shards are stopped on purpose). Every load loop is
bounded in requests and in time.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests import clickhouse_fixture
from tests.clickhouse_fixture import ClickHouseCluster
from tests.conftest import ProjectCreds, Server, free_port

# Skipped on a developer machine without ClickHouse; in CI (which installs it) they must run.
pytestmark = pytest.mark.skipif(
    not clickhouse_fixture.available() and not os.environ.get("CI"), reason="clickhouse-server is not installed"
)

BATCH = 2000
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseCluster]:
    running = clickhouse_fixture.start_cluster(tmp_path_factory.mktemp("clickhouse"), shards=2)
    yield running
    running.stop()


def start(tmp: Path, store: str, *extra: str) -> Server:
    data_dir = tmp / f"server-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir(parents=True)
    server = Server(data_dir=data_dir, port=free_port(), store=store, extra_args=["--log-level", "warning", *extra])
    server.start(timeout=60)
    return server


@pytest.fixture
def servers(cluster: ClickHouseCluster, tmp_path: Path) -> Iterator[list[Server]]:
    store = cluster.store_url(f"scale_{uuid.uuid4().hex[:8]}")
    running = [start(tmp_path, store)]
    try:
        running.append(start(tmp_path, store))
        yield running
    finally:
        for server in running:
            server.stop()


def make_events(count: int, duplicate_share: float, seed: int) -> tuple[list[dict[str, Any]], set[str]]:
    """Events with unique $insert_ids, some sent twice (identical copies); and the ids."""
    import random

    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    ids: set[str] = set()
    for i in range(count):
        if events and rng.random() < duplicate_share:
            events.append(events[rng.randrange(len(events))])
            continue
        insert_id = f"{seed:x}-{i:x}"
        ids.add(insert_id)
        events.append({
            "event": ("Viewed", "Bought", "Searched")[i % 3],
            "properties": {
                "time": T0 + rng.randrange(90 * 86400),
                "distinct_id": f"user-{rng.randrange(20_000)}",
                "$insert_id": insert_id,
                "plan": ("free", "pro")[i % 2],
                "price": round(rng.random() * 100, 2),
            },
        })
    return events, ids


def bodies(events: Sequence[dict[str, Any]]) -> list[bytes]:
    return [
        gzip.compress(b"\n".join(orjson.dumps(e) for e in events[i : i + BATCH]), 1)
        for i in range(0, len(events), BATCH)
    ]


class Importer:
    """Posts each body until it gets a 200, alternating servers; counts what it was told."""

    def __init__(self, servers: Sequence[Server], project: ProjectCreds, deadline: float) -> None:
        self.servers = servers
        self.project = project
        self.deadline = deadline
        self.counter = itertools.count()
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.done = 0

    def send(self, body: bytes) -> None:
        while True:
            if time.monotonic() > self.deadline:
                raise TimeoutError("import did not finish in time")
            server = self.servers[next(self.counter) % len(self.servers)]
            try:
                r = httpx.post(
                    f"{server.url}/import", content=body, auth=(self.project.secret, ""), timeout=60,
                    headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
                )
                status = r.status_code
            except httpx.TransportError:
                status = 0
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                assert r.json()["num_records_imported"] > 0
                with self.lock:
                    self.done += 1
                return
            assert status in (0, 503), (status, r.text)
            if status == 503:
                assert r.headers.get("Retry-After")
            time.sleep(0.2)

    def run(self, payloads: Sequence[bytes], clients: int = 4) -> None:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(self.send, payloads))


def exported_ids(server: Server, project: ProjectCreds) -> list[str]:
    ids: list[str] = []
    params = {"from_date": "2023-01-01", "to_date": "2024-12-31"}
    with httpx.stream("GET", f"{server.url}/api/2.0/export", params=params, auth=(project.secret, ""), timeout=300) as r:
        assert r.status_code == 200
        tail = b""
        for chunk in r.iter_bytes():
            data = tail + chunk
            lines = data.split(b"\n")
            tail = lines.pop()
            ids.extend(json.loads(line)["properties"]["$insert_id"] for line in lines if line)
    assert tail == b""
    return ids


def test_two_servers_two_shards_import_200k_with_duplicates_exactly_once(
    servers: list[Server], cluster: ClickHouseCluster
) -> None:
    project = servers[0].new_project()
    events, ids = make_events(200_000, duplicate_share=0.05, seed=1)
    assert len(events) - len(ids) > 9000  # about 5% sent twice
    importer = Importer(servers, project, deadline=time.monotonic() + 600)
    importer.run(bodies(events))
    assert importer.statuses == {200: len(bodies(events))}
    for server in servers:
        got = exported_ids(server, project)
        assert len(got) == len(ids) and set(got) == ids
    # Both shards hold part of the data.
    database = servers[0].store.split("/")[3].split("?")[0]  # type: ignore[union-attr]
    per_shard = [int(node.query(f"SELECT count() FROM `{database}`.events_local FINAL")) for node in cluster.nodes]
    assert sum(per_shard) == len(ids) and min(per_shard) > len(ids) // 4


@pytest.mark.parametrize("stopped", [1, 0], ids=["second-shard", "entry-and-registry-shard"])
def test_a_shard_stopped_mid_import_gives_503s_and_retries_store_everything_once(
    servers: list[Server], cluster: ClickHouseCluster, stopped: int
) -> None:
    """The second shard; or the first, which both servers talk to and which holds the
    registry (the servers keep authenticating from their cached credentials)."""
    project = servers[0].new_project()
    for server in servers:  # both servers have seen the project before the outage
        r = httpx.post(f"{server.url}/import", json=[], auth=(project.secret, ""), timeout=30)
        assert r.status_code == 200, r.text
    events, ids = make_events(40_000, duplicate_share=0.05, seed=2 + stopped)
    payloads = bodies(events)
    importer = Importer(servers, project, deadline=time.monotonic() + 300)
    shard = cluster.nodes[stopped]

    quarter = len(payloads) // 4
    importer.run(payloads[:quarter])

    def outage() -> None:
        """Crash the shard as the rest of the import starts; restart it once the clients
        have been refused a few times."""
        shard.kill()
        deadline = time.monotonic() + 60
        try:
            while importer.statuses.get(503, 0) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
        finally:
            shard.start()

    controller = threading.Thread(target=outage)
    controller.start()
    try:
        importer.run(payloads[quarter:], clients=3)
    finally:
        controller.join()
    assert importer.statuses.get(503, 0) >= 6, importer.statuses
    assert importer.statuses[200] == len(payloads)
    for server in servers:
        got = exported_ids(server, project)
        assert len(got) == len(ids), (len(got), len(ids))
        assert set(got) == ids


def test_workers_serve_from_several_processes(cluster: ClickHouseCluster, tmp_path: Path) -> None:
    server = start(tmp_path, cluster.store_url(f"workers_{uuid.uuid4().hex[:8]}"), "--workers", "2")
    try:
        project = server.new_project()
        events, ids = make_events(6000, duplicate_share=0.0, seed=3)
        pids = set()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for i in range(0, len(events), 500):
                r = client.post("/import", json=events[i : i + 500], auth=(project.secret, ""))
                assert r.status_code == 200, r.text
        assert set(exported_ids(server, project)) == ids
        assert server.process is not None
        for child in Path("/proc").iterdir():
            if child.name.isdigit():
                try:
                    stat = (child / "stat").read_text().split()
                except OSError:
                    continue
                if int(stat[3]) == server.process.pid:
                    pids.add(int(child.name))
        assert len(pids) >= 2, pids  # uvicorn's worker processes
    finally:
        server.stop()
