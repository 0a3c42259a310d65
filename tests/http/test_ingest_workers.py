"""Large ingest bodies are decoded and checked in worker processes; small ones inline.

The workers are real child processes of a real server: these tests find them in /proc,
kill one, and check that the next request is still answered and stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from eventkeep.http import checkers as checkers_module
from eventkeep.http.checkers import SHARED_MIN_ROWS, WORKER_NICENESS, EventCheckers
from eventkeep.ingest.pipeline import CheckedEvents, EventRequest, check_events
from tests.conftest import ProjectCreds, Server, gzip_bomb, start_server

NDJSON_GZIP = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended after it was listed
            found.update(int(child) for child in (task / "children").read_text().split())
    return found


def ingest_workers(pid: int) -> set[int]:
    """The pool's processes (not multiprocessing's resource tracker, also a child)."""
    return {child for child in children(pid) if b"spawn_main" in cmdline(child)}


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended after it was listed
        return b""


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
    wait_for(lambda: len(ingest_workers(pid)) == 2)
    for worker in ingest_workers(pid):
        with contextlib.suppress(ProcessLookupError):  # it ended after it was listed
            os.kill(worker, signal.SIGKILL)
    marker = uuid.uuid4().hex[:8]
    answer = post(pooled, project, batch(1500, marker))
    assert answer.status_code == 200, answer.text
    assert answer.json()["num_records_imported"] == 1500
    assert post(pooled, project, batch(1500, marker + "b")).status_code == 200
    assert len(pooled.export(project)) == 4500
    assert "ingest worker process died" in pooled.log()


def test_workers_end_when_their_server_is_killed(tmp_path: Path) -> None:
    """kill -9 gives the server no chance to stop its pool: the workers notice by themselves."""
    server = start_server(tmp_path, "--ingest-processes", "2")
    assert server.process is not None
    workers = ingest_workers(server.process.pid)
    assert len(workers) == 2
    server.kill()

    wait_for(lambda: not any(b"spawn_main" in cmdline(pid) for pid in workers), timeout=10)


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
        wait_for(lambda: len(ingest_workers(pid)) == 2)
        time.sleep(3)  # the workers are ready
        workers = ingest_workers(pid)
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
        assert ingest_workers(pid) == workers, "no worker died of a bad body"
    finally:
        inline.stop()


# -- how checked rows come back from the workers ---------------------------------------------


def request_of(count: int, marker: str, *, compressed: bool = True) -> EventRequest:
    body = b"\n".join(msgspec.json.encode(e) for e in batch(count, marker))
    return EventRequest("import", gzip.compress(body) if compressed else body, "application/x-ndjson", {},
                        int(time.time() * 1000), content_encoding="gzip" if compressed else "")


def same_as_inline(checked: CheckedEvents, request: EventRequest) -> None:
    inline = check_events(request)
    assert checked.error is None and inline.error is None
    assert len(checked.batch) == len(inline.batch) > 0
    # Generated $insert_ids aside (every event here has its own), the rows are the same.
    assert checked.batch.rows.drop_columns(["properties"]).equals(inline.batch.rows.drop_columns(["properties"]))
    assert [p.split(b'"$mp_api_timestamp_ms"')[0] for p in checked.batch.properties] == [
        p.split(b'"$mp_api_timestamp_ms"')[0] for p in inline.batch.properties
    ]


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of each answer the server side receives from a worker."""
    seen: list[str] = []
    received = checkers_module._read_back

    def spy(answer: Any) -> CheckedEvents:
        seen.append(type(answer).__name__)
        return received(answer)

    monkeypatch.setattr(checkers_module, "_read_back", spy)
    return seen


def run_checks(checkers: EventCheckers, requests: list[EventRequest]) -> list[CheckedEvents]:
    async def go() -> list[CheckedEvents]:
        await checkers.start()
        return [await checkers.check(request) for request in requests]

    return asyncio.run(go())


def test_large_batches_come_back_through_shared_memory_and_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[str]
) -> None:
    monkeypatch.setattr(checkers_module, "SHARED_MEMORY", tmp_path)
    checkers = EventCheckers(1)
    large, small = request_of(2000, "large"), request_of(SHARED_MIN_ROWS - 6, "small", compressed=False)
    assert len(small.body) > checkers_module.INLINE_MAX_BYTES, "the small batch still goes to the worker"
    try:
        results = run_checks(checkers, [large, small])
        shared_dir = checkers._shared_dir
        assert shared_dir is not None and shared_dir.parent == tmp_path
        assert answers == ["_SharedRows", "CheckedEvents"]
        for checked, request in zip(results, [large, small], strict=True):
            same_as_inline(checked, request)
        assert list(shared_dir.iterdir()) == [], "each file is deleted once read"
    finally:
        checkers.close()
    assert not shared_dir.exists()


def test_an_abandoned_request_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that goes away mid-request cancels the wait, not the worker's answer."""
    monkeypatch.setattr(checkers_module, "SHARED_MEMORY", tmp_path)
    checkers = EventCheckers(1)

    async def go() -> CheckedEvents:
        await checkers.start()
        abandoned = asyncio.create_task(checkers.check(request_of(2000, "gone")))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        # One worker takes tasks in order: once this one is answered, so was the first.
        return await checkers.check(request_of(2000, "next"))

    try:
        assert len(asyncio.run(go()).batch) == 2000
        assert checkers._shared_dir is not None
        assert list(checkers._shared_dir.iterdir()) == []
    finally:
        checkers.close()


def test_without_shared_memory_the_rows_take_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[str]
) -> None:
    monkeypatch.setattr(checkers_module, "SHARED_MEMORY", tmp_path / "missing")
    checkers = EventCheckers(1)
    try:
        request = request_of(2000, "piped")
        [checked] = run_checks(checkers, [request])
        assert answers == ["CheckedEvents"]
        same_as_inline(checked, request)
    finally:
        checkers.close()


def test_when_the_file_cannot_be_written_the_rows_take_the_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: list[str]
) -> None:
    """As when /dev/shm is full: the worker's write fails and nothing is lost."""
    monkeypatch.setattr(checkers_module, "SHARED_MEMORY", tmp_path)
    checkers = EventCheckers(1)
    try:
        run_checks(checkers, [request_of(10, "warm")])
        assert checkers._shared_dir is not None
        checkers._shared_dir.rmdir()
        request = request_of(2000, "unwritable")
        [checked] = run_checks(checkers, [request])
        assert answers[-1] == "CheckedEvents"
        same_as_inline(checked, request)
    finally:
        checkers.close()


def test_directories_left_by_servers_no_longer_running_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkers_module, "SHARED_MEMORY", tmp_path)
    dead = tmp_path / "eventkeep-999999999-abc"  # above Linux's largest pid
    alive = tmp_path / f"eventkeep-{os.getppid()}-def"
    other = tmp_path / "someone-else"
    for directory in (dead, alive, other):
        directory.mkdir()
        (directory / "rows.arrow").write_bytes(b"x")
    checkers = EventCheckers(1)
    try:
        run_checks(checkers, [])
        assert not dead.exists()
        assert (alive / "rows.arrow").exists() and (other / "rows.arrow").exists()
    finally:
        checkers.close()


FREED_MEMORY = """
import ctypes, sys
from eventkeep.collector import keep_freed_memory
if sys.argv[1] == "kept":
    keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
for megabytes in (1, 2, 4, 8, 16):  # requests' buffers, allocated, used and freed
    block = libc.malloc(megabytes << 20)
    ctypes.memset(block, 1, megabytes << 20)
    held = resident()
    libc.free(block)
    print(held - resident())  # bytes handed back to the system
"""


def test_workers_keep_the_memory_a_request_frees() -> None:
    """A worker frees megabytes after every request; glibc would hand them back to the
    system (here: every block larger than any freed before), and the next request would
    fault every page in again."""

    def returned(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", FREED_MEMORY, mode], capture_output=True, text=True, check=True)
        return [int(line) for line in out.stdout.split()]

    sizes = [megabytes << 20 for megabytes in (1, 2, 4, 8, 16)]
    assert all(given >= size for given, size in zip(returned("default"), sizes, strict=True))
    kept = returned("kept")
    assert len(kept) == len(sizes) and max(kept) < 1 << 20
