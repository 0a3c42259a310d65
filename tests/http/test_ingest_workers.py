"""Large ingest bodies are decoded and checked in worker processes; small ones inline.

The workers are real child processes of a real server: these tests find them in /proc,
kill one, and check that the next request is still answered and stored.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from eventkeep.http.checkers import WORKER_NICENESS, EventCheckers
from tests.conftest import ProjectCreds, Server, gzip_bomb, start_server

NDJSON_GZIP = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def ingest_workers(pid: int) -> set[int]:
    """The pool's processes (not multiprocessing's resource tracker, also a child)."""
    return {child for child in children(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()}


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def batch(count: int, marker: str) -> list[dict[str, Any]]:
    now = int(time.time())
    return [
        {"event": "Viewed", "properties": {
            "time": now - 60, "distinct_id": f"u{i}", "$insert_id": f"{marker}-{i}", "page": "/" + "p" * 40 * (i % 3),
        }}
        for i in range(count)
    ]


def post(server: Server, project: ProjectCreds, events: list[dict[str, Any]]) -> httpx.Response:
    body = gzip.compress(b"\n".join(msgspec.json.encode(e) for e in events))
    return httpx.post(f"{server.url}/import", content=body, headers=NDJSON_GZIP, auth=(project.secret, ""), timeout=60)


@pytest.fixture
def pooled(tmp_path: Path) -> Any:
    server = start_server(tmp_path, "--ingest-processes", "2")
    yield server
    server.stop()


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_workers_start_with_the_server_and_check_large_bodies(pooled: Server) -> None:
    assert pooled.process is not None
    pid = pooled.process.pid
    workers = ingest_workers(pid)
    assert len(workers) == 2, "the server listens once its workers are up"
    for worker in workers:
        # A lower priority, so that the store's writer is never starved (see checkers.py).
        assert os.getpriority(os.PRIO_PROCESS, worker) == os.getpriority(os.PRIO_PROCESS, pid) + WORKER_NICENESS
    project = pooled.new_project()
    assert post(pooled, project, batch(3, "small")).json()["num_records_imported"] == 3

    large = batch(2000, "large")
    large[7]["properties"]["time"] = "yesterday"  # one refusal, reported from a worker
    before = sum(cpu_ticks(child) for child in children(pid))
    answer = post(pooled, project, large)
    assert answer.status_code == 400, answer.text
    assert answer.json()["num_records_imported"] == 1999
    assert [r["index"] for r in answer.json()["failed_records"]] == [7]
    for part in range(3):
        assert post(pooled, project, batch(2000, f"more{part}")).status_code == 200
    assert sum(cpu_ticks(child) for child in children(pid)) > before, "the workers did the checking"
    stored = pooled.export(project)
    assert len(stored) == 3 + 1999 + 6000
    assert {e["properties"]["$insert_id"] for e in stored} >= {"large-0", "large-1999", "small-2", "more2-1999"}


def test_starting_waits_until_the_workers_answer() -> None:
    checkers = EventCheckers(2)
    try:
        asyncio.run(checkers.start())
        assert checkers.ready, "large bodies would still be checked inline, on the event loop"
    finally:
        checkers.close()
    assert not checkers.ready


def test_a_killed_worker_costs_no_request(pooled: Server) -> None:
    assert pooled.process is not None
    pid = pooled.process.pid
    project = pooled.new_project()
    assert post(pooled, project, batch(1500, "first")).status_code == 200
    wait_for(lambda: len(children(pid)) >= 2)
    for child in children(pid):
        os.kill(child, signal.SIGKILL)
    marker = uuid.uuid4().hex[:8]
    answer = post(pooled, project, batch(1500, marker))
    assert answer.status_code == 200, answer.text
    assert answer.json()["num_records_imported"] == 1500
    assert post(pooled, project, batch(1500, marker + "b")).status_code == 200
    assert len(pooled.export(project)) == 4500
    assert "ingest worker process died" in pooled.log()


def test_ingest_processes_zero_checks_everything_inline(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--ingest-processes", "0")
    try:
        assert server.process is not None
        project = server.new_project()
        time.sleep(2)
        assert post(server, project, batch(2000, "inline")).json()["num_records_imported"] == 2000
        assert children(server.process.pid) == set()
    finally:
        server.stop()


def test_workers_refuse_broken_and_oversized_bodies_as_inline_checking_does(pooled: Server, tmp_path: Path) -> None:
    """Large bodies reach the workers still compressed; inflating there must answer the same."""
    inline = start_server(tmp_path / "inline", "--ingest-processes", "0")
    try:
        assert pooled.process is not None
        pid = pooled.process.pid
        wait_for(lambda: len(children(pid)) >= 2)
        time.sleep(3)  # the workers are ready
        workers = children(pid)
        events = gzip.compress(b"\n".join(msgspec.json.encode(e) for e in batch(2000, "cut")))
        assert len(events) // 2 * 8 > 32 * 1024  # even the cut-off body goes to a worker
        bodies = {
            "truncated": events[: len(events) // 2],
            "not gzip": os.urandom(60_000),
            "bomb": gzip_bomb(64 * 1024 * 1024),
            "trailing garbage": events + os.urandom(8_000),
        }
        answers = {}
        for server in (pooled, inline):
            project = server.new_project()
            for name, body in bodies.items():
                r = httpx.post(f"{server.url}/import", content=body, headers=NDJSON_GZIP,
                               auth=(project.secret, ""), timeout=60)
                answers[server.url, name] = (r.status_code, r.json())
            assert server.export(project) == []
        for name in bodies:
            assert answers[pooled.url, name] == answers[inline.url, name], name
        assert answers[pooled.url, "bomb"] == (413, {
            "code": 413, "error": "request exceeds max limit of 10485760 bytes", "status": "Request Entity Too Large",
        })
        assert answers[pooled.url, "truncated"][0] == 400
        assert answers[pooled.url, "not gzip"][1]["error"] == "request body is not valid gzip"
        assert children(pid) == workers, "no worker died of a bad body"
    finally:
        inline.stop()
