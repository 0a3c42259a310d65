"""The import pipeline's own parts: how accepted records are cut into batches, and how the
run treats the garbage collector."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventkeep.client import Client
from eventkeep.client.importer import ImportOptions, _BatchCutter
from eventkeep.client.sender import Batch
from eventkeep.client.sources import CHUNK_RECORDS
from eventkeep.collector import BATCH_THRESHOLDS
from tests.client.conftest import DAY_S, NOW_S, assert_exactly_once, event_line
from tests.conftest import ProjectCreds, Server


def _batches(chunks: list[list[bytes]], batch_size: int, batch_bytes: int, whole: bool) -> list[tuple[Any, ...]]:
    sent: list[Batch] = []
    cutter = _BatchCutter(ImportOptions(batch_size=batch_size, batch_bytes=batch_bytes), (0, 0), sent.append)
    record = 0
    for chunk in chunks:
        records = list(range(record, record + len(chunk)))
        if whole:
            cutter.add_all(chunk, 0, records)
        else:
            for line, index in zip(chunk, records, strict=True):
                cutter.add(line, (0, index))
        record += len(chunk)
        if cutter.full:
            cutter.flush((0, record))
    cutter.flush((0, record))
    return [(b.seq, b.lines, b.positions, b.end, b.counts.read) for b in sent]


@given(
    chunks=st.lists(st.lists(st.integers(0, 40).map(lambda n: b"x" * n), max_size=12), max_size=6),
    batch_size=st.integers(1, 7),
    batch_bytes=st.integers(1, 90),
)
def test_cutting_a_chunk_whole_makes_the_batches_record_by_record_does(
    chunks: list[list[bytes]], batch_size: int, batch_bytes: int
) -> None:
    by_record = _batches(chunks, batch_size, batch_bytes, whole=False)
    assert _batches(chunks, batch_size, batch_bytes, whole=True) == by_record
    # and those keep to the limits: a record over batch_bytes goes alone
    for _, lines, _, _, read in by_record:
        assert len(lines) == read <= batch_size
        assert len(lines) == 1 or sum(len(line) + 1 for line in lines) <= batch_bytes


def test_an_import_runs_with_fewer_collections_and_puts_the_callers_settings_back(
    server: Server, project: ProjectCreds
) -> None:
    seen: list[tuple[int, int, int]] = []

    def events() -> Iterator[dict[str, Any]]:
        for i in range(3):
            seen.append(gc.get_threshold())
            yield event_line_dict(i)

    gc.set_threshold(500, 7, 9)
    try:
        summary = Client(server.url, token=project.token, environ={}).import_events(events())
        assert summary.total.imported == 3
        assert seen == [BATCH_THRESHOLDS] * 3
        assert gc.get_threshold() == (500, 7, 9)
    finally:
        gc.set_threshold(700, 10, 10)
    assert_exactly_once(server, project, 3, prefix="gc")


def event_line_dict(i: int) -> dict[str, Any]:
    return json.loads(event_line(i, NOW_S - DAY_S, prefix="gc"))


def test_importing_clean_ndjson_never_loads_pyarrow_or_numpy(tmp_path: Path) -> None:
    """The tool starts and runs in a fraction of a second without them (importing pyarrow
    costs ~0.5 s of CPU); a file of whole chunks, whose last chunk is empty, included."""
    path = tmp_path / "e.ndjson"
    path.write_bytes(b"\n".join(event_line(i, NOW_S - DAY_S) for i in range(2 * CHUNK_RECORDS)) + b"\n")
    script = (
        "import sys\n"
        "from eventkeep.__main__ import main\n"
        "try:\n"
        f"    main(['import', {str(path)!r}, '--dry-run', '--progress', 'none', '--no-checkpoint'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print(sorted({'pyarrow', 'numpy'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "4,000 valid" in done.stderr
    assert done.stdout.strip() == "[]"
