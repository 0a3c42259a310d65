"""Request limits on /import and /track: size (after gzip), event count, and broken bodies.

Mixpanel accepts up to 10 MB of uncompressed JSON and 2000 events per request (spec §2.2,
§3.4). The size limit applies after decompression, so a gzip bomb must be refused after
inflating just past the limit, quickly and without the server's memory growing with it.
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ProjectCreds, Server, event, gzip_bomb, start_server

LIMIT = 10 * 1024 * 1024
TOO_LARGE = {"code": 413, "error": "request exceeds max limit of 10485760 bytes", "status": "Request Entity Too Large"}
TOO_MANY = {"code": 413, "error": "request exceeds max limit of 2000 records", "status": "Request Entity Too Large"}
NOT_GZIP = {"code": 400, "error": "request body is not valid gzip", "status": "Bad Request"}
JSON_HEADERS = {"Content-Type": "application/json"}
GZIP_HEADERS = {**JSON_HEADERS, "Content-Encoding": "gzip"}
BOMB_INFLATED = 1024 * 1024 * 1024  # 1 GiB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    # The builder is exact: a small one inflates (CRC and length checked by gzip) to the text
    # it promises. The big one differs only in how often the same block is repeated.
    small = gzip_bomb(8 * 1024 * 1024)
    assert gzip.decompress(small) == b"[" + b" " * (8 * 1024 * 1024) + b"]"
    data = gzip_bomb(BOMB_INFLATED)
    assert len(data) < 1_200_000  # about a megabyte on the wire for a gigabyte inflated
    assert data[:1024] == small[:1024] and data[-64:-8] == small[-64:-8]
    assert struct.unpack("<I", data[-4:])[0] == BOMB_INFLATED + 2
    return data


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident set size of a process (Linux `VmHWM`)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def tracked(project: ProjectCreds, **props: Any) -> dict[str, Any]:
    return {
        "event": "Tracked",
        "properties": {"token": project.token, "distinct_id": "t-1", "time": int(time.time()) - 60, "$insert_id": uuid.uuid4().hex, **props},
    }


def padded_array(events: list[dict[str, Any]], size: int) -> bytes:
    """A JSON array of the events, padded with whitespace to exactly `size` bytes."""
    body = json.dumps(events).encode()
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"]"


# --- gzip bombs -------------------------------------------------------------------------


def test_gzip_bomb_on_import_is_refused_fast_and_in_bounded_memory(tmp_path: Path, bomb: bytes) -> None:
    own = start_server(tmp_path)
    try:
        assert own.process is not None
        project = own.new_project()
        # Warm up the gzip, JSON and store paths so the baseline includes them.
        warm = gzip.compress(json.dumps([event(n=i) for i in range(100)]).encode())
        r = httpx.post(f"{own.url}/import", content=warm, headers=GZIP_HEADERS, auth=(project.secret, ""), timeout=30)
        assert r.status_code == 200, r.text
        baseline = vm_hwm_bytes(own.process.pid)

        started = time.monotonic()
        r = httpx.post(f"{own.url}/import", content=bomb, headers=GZIP_HEADERS, auth=(project.secret, ""), timeout=30)
        elapsed = time.monotonic() - started
        assert r.status_code == 413, r.text
        assert r.json() == TOO_LARGE
        assert elapsed < 3.0, f"refusing the bomb took {elapsed:.1f}s"
        grown = vm_hwm_bytes(own.process.pid) - baseline
        assert grown < 100 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MB"

        # The server is still fine, and stored nothing from the bomb.
        r = httpx.post(f"{own.url}/import", json=[event(after=True)], auth=(project.secret, ""), timeout=30)
        assert r.status_code == 200, r.text
        stored = own.export(project)
        assert len(stored) == 101
        assert own.process.poll() is None
    finally:
        own.stop()


@pytest.mark.parametrize(
    ("verbose", "expected"),
    [("0", "0"), ("1", {"status": 0, "error": "request exceeds max limit of 10485760 bytes"})],
)
def test_gzip_bomb_on_track_gets_the_legacy_answer(server: Server, bomb: bytes, verbose: str, expected: Any) -> None:
    started = time.monotonic()
    r = httpx.post(f"{server.url}/track", params={"verbose": verbose}, content=bomb, headers=GZIP_HEADERS, timeout=30)
    assert time.monotonic() - started < 3.0
    assert r.status_code == 413
    assert (r.json() if verbose == "1" else r.text) == expected


# --- the 10 MB limit on plain and gzip bodies ------------------------------------------------


def test_import_body_of_exactly_10mb_is_accepted_and_one_byte_more_refused(
    server: Server, project: ProjectCreds, client: httpx.Client
) -> None:
    auth = (project.secret, "")
    at_limit = padded_array([event(edge="at")], LIMIT)
    r = client.post("/import", content=at_limit, headers=JSON_HEADERS, auth=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"code": 200, "num_records_imported": 1, "status": "OK"}

    over = padded_array([event(edge="over")], LIMIT + 1)
    r = client.post("/import", content=over, headers=JSON_HEADERS, auth=auth)
    assert r.status_code == 413
    assert r.json() == TOO_LARGE

    # The same limit counts the uncompressed size of a gzip body.
    r = client.post("/import", content=gzip.compress(padded_array([event(edge="gz-at")], LIMIT)), headers=GZIP_HEADERS, auth=auth)
    assert r.status_code == 200, r.text
    r = client.post("/import", content=gzip.compress(padded_array([event(edge="gz-over")], LIMIT + 1)), headers=GZIP_HEADERS, auth=auth)
    assert r.status_code == 413
    assert r.json() == TOO_LARGE

    assert sorted(e["properties"]["edge"] for e in server.export(project)) == ["at", "gz-at"]


def test_oversized_chunked_body_without_content_length_is_refused(
    server: Server, project: ProjectCreds, client: httpx.Client
) -> None:
    def chunks() -> Iterator[bytes]:
        yield json.dumps([event()])[:-1].encode()
        for _ in range(11):  # 11 MiB of whitespace, streamed
            yield b" " * (1024 * 1024)
        yield b"]"

    r = client.post("/import", content=chunks(), headers=JSON_HEADERS, auth=(project.secret, ""))
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert r.json() == TOO_LARGE
    assert server.export(project) == []


@pytest.mark.parametrize(("verbose", "expected"), [("0", "0"), ("1", {"status": 0, "error": "request exceeds max limit of 10485760 bytes"})])
def test_oversized_track_body_gets_the_legacy_answer(
    server: Server, project: ProjectCreds, client: httpx.Client, verbose: str, expected: Any
) -> None:
    r = client.post("/track", params={"verbose": verbose}, content=padded_array([tracked(project)], LIMIT + 1), headers=JSON_HEADERS)
    assert r.status_code == 413
    assert (r.json() if verbose == "1" else r.text) == expected
    assert server.export(project) == []


# --- the 2000-event limit ------------------------------------------------------------------


def test_import_of_2000_events_is_accepted_and_2001_refused(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    auth = (project.secret, "")
    r = client.post("/import", json=[event(i=i) for i in range(2000)], auth=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"code": 200, "num_records_imported": 2000, "status": "OK"}

    r = client.post("/import", json=[event(i=i, extra=True) for i in range(2001)], auth=auth)
    assert r.status_code == 413
    assert r.json() == TOO_MANY
    stored = server.export(project)
    assert len(stored) == 2000
    assert not any("extra" in e["properties"] for e in stored)


@pytest.mark.parametrize(("verbose", "expected"), [("0", "0"), ("1", {"status": 0, "error": "request exceeds max limit of 2000 records"})])
def test_track_of_2001_events_gets_the_legacy_answer(
    server: Server, project: ProjectCreds, client: httpx.Client, verbose: str, expected: Any
) -> None:
    r = client.post("/track", params={"verbose": verbose}, json=[tracked(project) for _ in range(2001)])
    assert r.status_code == 413
    assert (r.json() if verbose == "1" else r.text) == expected
    assert server.export(project) == []

    r = client.post("/track", params={"verbose": verbose}, json=[tracked(project, i=i) for i in range(2000)])
    assert r.status_code == 200
    assert (r.json() if verbose == "1" else r.text) == ({"status": 1, "error": None} if verbose == "1" else "1")
    assert len(server.export(project)) == 2000


# --- bodies that are not what they claim -------------------------------------------------------


def test_body_claiming_gzip_that_is_not_gzip_gets_400(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/import", content=json.dumps([event()]).encode(), headers=GZIP_HEADERS, auth=(project.secret, ""))
    assert r.status_code == 400
    assert r.json() == NOT_GZIP
    assert server.export(project) == []


def test_truncated_gzip_body_is_refused_whole(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    """A cut-off gzip body must not store the events that happen to precede the cut."""
    events = [event(i=i, pad="x" * 200) for i in range(200)]
    whole = gzip.compress("\n".join(json.dumps(e) for e in events).encode())
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    for cut in (whole[: len(whole) // 2], whole[:-8]):  # half the stream; just the trailer missing
        r = client.post("/import", params={"strict": "0"}, content=cut, headers=headers, auth=(project.secret, ""))
        assert r.status_code == 400, r.text
        assert r.json()["status"] == "Bad Request"
        assert r.json()["error"].startswith("request body is not valid gzip")
    assert server.export(project) == []


def test_concatenated_gzip_members_are_all_read(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    """`cat a.gz b.gz` is valid gzip (RFC 1952 §2.2); the second member must not be dropped."""
    events = [event(i=i) for i in range(200)]
    lines = [json.dumps(e).encode() + b"\n" for e in events]
    body = gzip.compress(b"".join(lines[:100])) + gzip.compress(b"".join(lines[100:]))
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    r = client.post("/import", content=body, headers=headers, auth=(project.secret, ""))
    assert r.status_code == 200, r.text
    assert r.json() == {"code": 200, "num_records_imported": 200, "status": "OK"}
    assert sorted(e["properties"]["i"] for e in server.export(project)) == list(range(200))


def test_broken_json_gets_400_with_a_json_error(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    good = json.dumps([event()])
    for broken in (good[:-5], "[{]", '[{"event": "x", "properties": {"time": 1}'):
        r = client.post("/import", content=broken.encode(), headers=JSON_HEADERS, auth=(project.secret, ""))
        assert r.status_code == 400, broken
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert (body["code"], body["status"]) == (400, "Bad Request")
        assert body["error"].startswith("unable to parse request body as JSON")
        # and gzipped, the same answer
        r = client.post("/import", content=gzip.compress(broken.encode()), headers=GZIP_HEADERS, auth=(project.secret, ""))
        assert r.status_code == 400 and r.json() == body
    assert server.export(project) == []


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_track_broken_bodies_get_the_legacy_answer(
    server: Server, project: ProjectCreds, client: httpx.Client, verbose: str
) -> None:
    params = {"verbose": verbose}
    not_gzip = client.post("/track", params=params, content=json.dumps([tracked(project)]).encode(), headers=GZIP_HEADERS)
    broken = client.post("/track", params=params, content=json.dumps([tracked(project)])[:-3].encode(), headers=JSON_HEADERS)
    for r, message in ((not_gzip, "request body is not valid gzip"), (broken, "unable to parse request body as JSON")):
        assert r.status_code == 200  # legacy endpoints answer validation failures with 200 and 0
        if verbose == "1":
            body = r.json()
            assert body["status"] == 0
            assert body["error"].startswith(message)
        else:
            assert r.text == "0"
    assert server.export(project) == []
