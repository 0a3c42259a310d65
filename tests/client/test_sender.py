"""Sending through the Python API against scripted servers (httpx.MockTransport)."""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from isal import igzip

from eventkeep.client import Client, RetryPolicy
from eventkeep.client.sender import parse_retry_after
from tests.client.conftest import DAY_S, NOW_S, event_line

T = int(time.time()) - 86400


def events(n: int, pad: int = 0) -> list[dict[str, Any]]:
    return [{"event": "E", "properties": {"time": T, "distinct_id": f"u{i}", "$insert_id": f"s{i}", "pad": "x" * pad}}
            for i in range(n)]


class Script:
    """A thread-safe fake /import: `answer(batch, attempt)` decides each response."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.lock = threading.Lock()
        self.calls: list[tuple[float, list[dict[str, Any]]]] = []
        self.attempts: dict[str, int] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["content-encoding"] == "gzip"
        assert request.url.params["strict"] == "1"
        body = igzip.decompress(request.content)
        batch = [json.loads(line) for line in body.split(b"\n")]
        key = batch[0]["properties"]["$insert_id"]
        with self.lock:
            self.calls.append((time.monotonic(), batch))
            self.attempts[key] = self.attempts.get(key, 0) + 1
            attempt = self.attempts[key]
        response: httpx.Response = self.answer(batch, attempt)
        return response


def client(script: Script) -> Client:
    return Client("http://fake.test", token="tok", transport=httpx.MockTransport(script), environ={})


FAST = RetryPolicy(max_attempts=4, backoff_base=0.001, backoff_max=0.01)


def ok(batch: list[Any], attempt: int) -> httpx.Response:
    return httpx.Response(200, json={"code": 200, "num_records_imported": len(batch), "status": "OK"})


def test_batches_keep_to_the_count_and_byte_limits() -> None:
    script = Script(ok)
    summary = client(script).import_events(events(5000, pad=300), batch_size=1500, batch_bytes=200_000, retry=FAST)
    sizes = [len(batch) for _, batch in script.calls]
    assert sum(sizes) == 5000 and max(sizes) <= 1500
    assert all(sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in b) <= 200_000 for _, b in script.calls)
    assert summary.exit_status == 0 and summary.total.imported == 5000


def refusing(index: int) -> Any:
    """A server that refuses the record at `index` of every batch, as Mixpanel's strict mode
    does: a 400 listing it, the others imported."""

    def answer(batch: list[Any], attempt: int) -> httpx.Response:
        failed = [{"index": index, "insert_id": batch[index]["properties"]["$insert_id"], "field": "properties.x",
                   "message": "properties.x is invalid: nope"}]
        return httpx.Response(400, json={"code": 400, "error": "some data points in the request failed validation",
                                         "failed_records": failed, "num_records_imported": len(batch) - 1,
                                         "status": "Bad Request"})

    return answer


def test_per_record_refusals_from_the_server_go_to_the_rejects_file(tmp_path: Path) -> None:
    rejects = tmp_path / "r.ndjson"
    script = Script(refusing(1))
    summary = client(script).import_events(events(10), batch_size=5, retry=FAST, rejects=str(rejects))
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == [1, 6]
    assert {line["event"]["properties"]["$insert_id"] for line in lines} == {"s1", "s6"}
    assert {(line["field"], line["message"], line["stage"]) for line in lines} == {
        ("properties.x", "properties.x is invalid: nope", "server")}
    assert (summary.total.imported, summary.total.rejected_total, summary.exit_status) == (8, 2, 1)
    assert len(script.calls) == 2  # a 400 is never retried


def test_a_whole_batch_400_is_refused_not_retried(tmp_path: Path) -> None:
    script = Script(lambda b, a: httpx.Response(400, json={"code": 400, "error": "unable to parse", "status": "Bad"}))
    summary = client(script).import_events(events(3), retry=FAST, rejects=str(tmp_path / "r"))
    assert len(script.calls) == 1
    assert summary.total.rejected == {"request: HTTP 400: unable to parse": 3}


def test_413_halves_the_batch_until_it_fits() -> None:
    def answer(batch: list[Any], attempt: int) -> httpx.Response:
        if len(batch) > 300:
            return httpx.Response(413, json={"code": 413, "error": "request exceeds max limit of 2097152 bytes"})
        return ok(batch, attempt)

    script = Script(answer)
    summary = client(script).import_events(events(2000), retry=FAST)
    assert summary.total.imported == 2000 and summary.exit_status == 0
    assert sorted(len(b) for _, b in script.calls if len(b) <= 300) == [250] * 8


def test_giving_up_fails_the_run_and_stops_sending() -> None:
    script = Script(lambda b, a: httpx.Response(503, json={"error": "down"}))
    summary = client(script).import_events(events(20_000), retry=FAST, concurrency=2)
    assert summary.exit_status == 3 and not summary.delivered_all
    assert summary.stopped_early and summary.total.read < 20_000  # it stopped reading, too
    assert summary.total.failed == summary.total.read and summary.total.imported == 0
    assert "gave up after 4 attempts" in summary.render()
    assert len(script.calls) < 20  # it stopped: it did not try every batch four times
    assert summary.retries == summary.retry_reasons["503"]


def test_retry_after_pauses_every_worker() -> None:
    paused_until: list[float] = []

    def answer(batch: list[Any], attempt: int) -> httpx.Response:
        if batch[0]["properties"]["$insert_id"] == "s0" and attempt == 1:
            paused_until.append(time.monotonic() + 0.4)
            return httpx.Response(429, headers={"Retry-After": "0.4"}, json={"error": "slow down"})
        return ok(batch, attempt)

    script = Script(answer)
    summary = client(script).import_events(events(6000), batch_size=500, concurrency=3, retry=FAST)
    assert summary.exit_status == 0 and summary.retry_reasons == {"429": 1}
    start = paused_until[0] - 0.4
    # After the 429 was answered, nothing was sent until the pause ended (bar requests already in flight).
    late = [t for t, _ in script.calls if start + 0.1 < t < paused_until[0] - 0.02]
    assert late == []


def test_a_count_that_does_not_add_up_is_reported() -> None:
    script = Script(lambda b, a: httpx.Response(200, json={"code": 200, "num_records_imported": len(b) - 1}))
    summary = client(script).import_events(events(10), retry=FAST)
    assert summary.mismatches and "counted 9 imported of 10 sent" in summary.mismatches[0]
    assert "warning" in summary.render()


def test_retry_after_parsing_and_backoff_bounds() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after("0.5") == 0.5 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (parse_retry_after(later) or 0) <= 31
    policy = RetryPolicy()
    rng = random.Random(5)
    delays = [policy.backoff(n, rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        step = min(2.0 * 2 ** (n - 1), 60.0)
        assert step + 1.0 <= delay <= step + 5.0  # Mixpanel's advice: 2 s doubling to 60 s, 1–5 s jitter


@pytest.mark.parametrize("status", [401, 403])
def test_credentials_refused_abort_without_retrying(status: int) -> None:
    script = Script(lambda b, a: httpx.Response(status, json={"error": "Invalid credentials"}))
    summary = client(script).import_events(events(5000), retry=FAST, concurrency=1)
    assert summary.exit_status == 3 and summary.retries == 0
    assert len(script.calls) == 1 and "Invalid credentials" in summary.render()


def test_ndjson_chunks_sent_as_read_keep_their_line_numbers(tmp_path: Path) -> None:
    """Clean NDJSON chunks travel as the file's own text (one batch each); a chunk with a
    bad line takes the record-by-record way. Refusals from the server, and the rejects
    file's line numbers, are the same either way, blank lines counted."""
    lines = [event_line(i, NOW_S - DAY_S, "t") for i in range(5000)]
    lines[100] = b""  # a blank line inside the first chunk: not a record
    lines[2500] = b'{"event":"E","properties":{"distinct_id":"u1","$insert_id":"nope"}}'  # no time
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    bodies: list[bytes] = []
    script = Script(refusing(7))

    def recording(request: httpx.Request) -> httpx.Response:
        bodies.append(igzip.decompress(request.content))
        return script(request)

    rejects = tmp_path / "r.ndjson"
    c = Client("http://fake.test", token="tok", transport=httpx.MockTransport(recording), environ={})
    summary = c.import_files([str(path)], retry=FAST, rejects=str(rejects), concurrency=1)
    # The file's text, as read: the first chunk ends at its 2000th record (line 2000, 0-based).
    assert bodies[0] == b"\n".join(lines[:100] + lines[101:2001])
    assert len(bodies) == 3 and sum(body.count(b"\n") + 1 for body in bodies) == 4998
    entries = sorted((e["index"], e["stage"], e["field"]) for e in map(json.loads, rejects.read_text().splitlines()))
    # index 7 of each batch: line 7 (the blank line 100 comes later); line 2008 (the second
    # chunk, lines 2001-4000, one refused locally, goes record by record); and line 4008: the
    # last chunk is sent as read, so the batch being filled goes first, unfilled
    firsts = [0, 2001, 4001]
    assert entries == sorted([(2500, "validation", "properties.time")] + [(f + 7, "server", "properties.x") for f in firsts])
    assert (summary.total.imported, summary.total.rejected_total) == (4998 - 3, 4)


def test_a_413_splits_a_batch_sent_as_read(tmp_path: Path) -> None:
    def answer(batch: list[Any], attempt: int) -> httpx.Response:
        if len(batch) > 500:
            return httpx.Response(413, json={"code": 413, "error": "too large", "status": "Bad"})
        return ok(batch, attempt)

    script = Script(answer)
    path = tmp_path / "e.ndjson"
    path.write_bytes(b"\n".join(event_line(i, NOW_S - DAY_S, "s") for i in range(2000)) + b"\n")
    summary = client(script).import_files([str(path)], retry=FAST)
    assert [len(b) for _, b in script.calls] == [2000, 1000, 500, 500, 1000, 500, 500]
    assert summary.total.imported == 2000 and summary.exit_status == 0
