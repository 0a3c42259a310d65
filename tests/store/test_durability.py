"""Crash durability: a 200 from /import means the events survive a SIGKILL of the server.

Several client threads post batches with unique `$insert_id`s; the server is killed with
SIGKILL while they are still sending. After a restart on the same data directory, every
event of every request that got 200 is exported exactly once. Events of requests that did
not get 200 may or may not be there, but never twice, and retrying those requests (as a
client would) leaves every event stored exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ProjectCreds, start_server

THREADS = 4
REQUESTS_PER_THREAD = 40
EVENTS_PER_REQUEST = 200
KILL_AFTER_OK = 30  # of 160 requests: the kill lands mid-way
TIME_LIMIT = 60.0  # seconds for the whole load phase, whatever happens
IMPORTED = {"code": 200, "num_records_imported": EVENTS_PER_REQUEST, "status": "OK"}


def request_events(thread: int, request: int, base_time: int) -> list[dict[str, Any]]:
    return [
        {
            "event": f"Load {i % 4}",
            "properties": {
                "time": base_time + request * EVENTS_PER_REQUEST + i,
                "distinct_id": f"user-{thread}-{i % 13}",
                "$insert_id": f"t{thread}-r{request}-e{i}",
                "thread": thread,
                "request": request,
                "i": i,
            },
        }
        for i in range(EVENTS_PER_REQUEST)
    ]


class Load:
    """Client threads posting to /import, recording exactly which requests got a 200."""

    def __init__(self, url: str, project: ProjectCreds, base_time: int) -> None:
        self.url = url
        self.project = project
        self.base_time = base_time
        self.deadline = time.monotonic() + TIME_LIMIT
        self.lock = threading.Lock()
        self.outcomes: dict[tuple[int, int], str] = {}
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(THREADS)]

    def ok(self) -> set[tuple[int, int]]:
        with self.lock:
            return {key for key, outcome in self.outcomes.items() if outcome == "200"}

    def _run(self, thread: int) -> None:
        with httpx.Client(timeout=10) as client:
            for request in range(REQUESTS_PER_THREAD):
                if time.monotonic() > self.deadline:
                    return
                try:
                    response = client.post(
                        f"{self.url}/import",
                        json=request_events(thread, request, self.base_time),
                        auth=(self.project.secret, ""),
                    )
                    outcome = str(response.status_code)
                    if outcome == "200" and response.json() != IMPORTED:
                        outcome = f"200 with {response.text}"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with self.lock:
                    self.outcomes[(thread, request)] = outcome

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 15)
            assert not thread.is_alive(), "a client thread did not finish"


def test_acknowledged_imports_survive_sigkill(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    project = server.new_project()
    load = Load(server.url, project, base_time=int(time.time()) - 30 * 86400)
    try:
        load.start()
        while len(load.ok()) < KILL_AFTER_OK:
            assert time.monotonic() < load.deadline, f"too few requests succeeded: {load.outcomes}"
            assert server.process is not None and server.process.poll() is None, server.log()
            time.sleep(0.002)
        server.kill()
        load.join()
    finally:
        server.kill()

    acknowledged = load.ok()
    odd = {key: o for key, o in load.outcomes.items() if o.startswith("200 ")}
    assert odd == {}, f"200 answers that do not acknowledge the whole batch: {odd}"
    not_acknowledged = {
        (t, r) for t in range(THREADS) for r in range(REQUESTS_PER_THREAD)
    } - acknowledged
    assert len(acknowledged) >= KILL_AFTER_OK
    assert not_acknowledged, "every request finished before the kill: nothing was tested"

    restarted = start_server(tmp_path)  # same data directory
    try:
        stored = restarted.export(project)
        counts = Counter(e["properties"]["$insert_id"] for e in stored)
        twice = [insert_id for insert_id, n in counts.items() if n > 1]
        assert twice == [], f"{len(twice)} events stored more than once, e.g. {twice[:5]}"

        by_id = {e["properties"]["$insert_id"]: e for e in stored}
        sent: dict[str, dict[str, Any]] = {}
        for t in range(THREADS):
            for r in range(REQUESTS_PER_THREAD):
                sent.update({e["properties"]["$insert_id"]: e for e in request_events(t, r, load.base_time)})
        assert set(by_id) <= set(sent), "events were stored that nobody sent"
        for key in sorted(acknowledged):
            for want in request_events(*key, load.base_time):
                got = by_id.get(want["properties"]["$insert_id"])
                assert got is not None, f"request {key} got 200 but {want['properties']['$insert_id']} is lost"
        for got in stored:
            want = sent[got["properties"]["$insert_id"]]
            assert got["event"] == want["event"]
            assert got["properties"]["distinct_id"] == want["properties"]["distinct_id"]
            assert got["properties"]["time"] == want["properties"]["time"]
            assert (got["properties"]["thread"], got["properties"]["request"], got["properties"]["i"]) == (
                want["properties"]["thread"], want["properties"]["request"], want["properties"]["i"],
            )

        # A client retries what it did not see acknowledged: afterwards all is there, once.
        with httpx.Client(timeout=30) as client:
            for key in sorted(not_acknowledged):
                response = client.post(
                    f"{restarted.url}/import", json=request_events(*key, load.base_time), auth=(project.secret, "")
                )
                assert response.status_code == 200, response.text
        final = restarted.export(project)
        assert len(final) == len(sent)
        assert {e["properties"]["$insert_id"] for e in final} == set(sent)
    finally:
        restarted.stop()
