"""Helpers for the import/pull tool's tests: fast input generation, running the CLI, and
reading a project's stored events back through the export API without holding them all."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, ProjectCreds, Server

NOW_S = int(time.time())
DAY_S = 86400
_ID_RE = re.compile(rb'"\$insert_id":"([^"]*)"')


def event_line(i: int, start_s: int, prefix: str = "i") -> bytes:
    """A valid event whose `$insert_id` is `<prefix><i:07d>`, quick to make by the million."""
    return b'{"event":"E%d","properties":{"time":%d,"distinct_id":"u%d","$insert_id":"%s%07d","n":%d,"plan":"pro"}}' % (
        i % 7, start_s + i % DAY_S, i % 5000, prefix.encode(), i, i,
    )


def write_ndjson(path: Path, lines: Iterable[bytes], *, gzip: bool | None = None) -> Path:
    """Write lines (streaming, 10k at a time), gzip-compressed if the name ends in .gz."""
    compress = path.name.endswith(".gz") if gzip is None else gzip
    if compress:
        from isal import igzip_threaded

        out: Any = igzip_threaded.open(path, "wb", compresslevel=1, threads=1)
    else:
        out = open(path, "wb")  # noqa: SIM115 - closed below
    with out:
        block: list[bytes] = []
        for line in lines:
            block.append(line)
            if len(block) >= 10_000:
                out.write(b"\n".join(block) + b"\n")
                block.clear()
        if block:
            out.write(b"\n".join(block) + b"\n")
    return path


def valid_lines(n: int, start_s: int = NOW_S - 3 * DAY_S, prefix: str = "i") -> Iterator[bytes]:
    for i in range(n):
        yield event_line(i, start_s, prefix)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m eventkeep ARGS` with a private cache folder (automatic checkpoints)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "eventkeep", *args], cwd=ROOT, capture_output=True, timeout=timeout, env=full_env,
        input=stdin.decode() if stdin is not None else None, text=True,
    )


def summary_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The --json summary (the last stdout line)."""
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary; exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def stream_insert_ids(server: Server, project: ProjectCreds, **params: str) -> Iterator[bytes]:
    """Each stored event's `$insert_id`, streamed from the export API."""
    query = {"from_date": "1971-01-01", "to_date": "2100-01-01", **params}
    with httpx.stream("GET", f"{server.url}/api/2.0/export", params=query, auth=(project.secret, ""),
                      timeout=600) as response:
        response.raise_for_status()
        pending = b""
        for chunk in response.iter_bytes():
            data = pending + chunk
            lines = data.split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line:
                    match = _ID_RE.search(line)
                    assert match, line[:200]
                    yield match.group(1)
        assert not pending


def assert_exactly_once(server: Server, project: ProjectCreds, n: int, prefix: str = "i") -> None:
    """Every `<prefix><i:07d>` for i < n is stored exactly once, and nothing else is."""
    seen = bytearray(n)
    extra: list[bytes] = []
    total = 0
    head = prefix.encode()
    for insert_id in stream_insert_ids(server, project):
        total += 1
        if insert_id.startswith(head) and insert_id[len(head):].isdigit() and int(insert_id[len(head):]) < n:
            i = int(insert_id[len(head):])
            if seen[i] < 255:
                seen[i] += 1
        else:
            extra.append(insert_id)
    missing = seen.count(0)
    duplicated = sum(1 for v in seen if v > 1)
    assert (missing, duplicated, extra[:5], total) == (0, 0, [], n), (
        f"{missing} missing, {duplicated} duplicated, {len(extra)} unexpected, {total} stored of {n}"
    )


@pytest.fixture
def cache_env(tmp_path: Path) -> dict[str, str]:
    """Automatic checkpoints go to a private cache folder, never the user's."""
    return {"XDG_CACHE_HOME": str(tmp_path / "cache")}
