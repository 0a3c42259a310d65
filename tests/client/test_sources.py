"""Readers: every format and compression, streaming, positions and skipping (no server)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventkeep.client import sources
from eventkeep.client.sources import (
    InputError,
    Source,
    expand_inputs,
    iter_array_elements,
    read_source,
)


def records(path: Path, **kwargs: Any) -> list[tuple[int, Any]]:
    """(record index, decoded record) for every record of a file."""
    out = []
    for chunk in read_source(Source(str(path)), 0, **kwargs):
        items = [json.loads(r) for r in chunk.raws] if chunk.raws is not None else chunk.rows or []
        out.extend(zip(chunk.indexes, items, strict=True))
    return out


EVENTS = [{"event": "E", "properties": {"time": 1700000000 + i, "distinct_id": f"u{i}", "$insert_id": f"i{i}"}}
          for i in range(5)]


def _ndjson(events: list[Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.parametrize("name,encode", [
    ("e.ndjson", lambda b: b),
    ("e.jsonl.gz", gzip.compress),
    ("e.ndjson.zst", _zstd),
    ("misnamed.ndjson", gzip.compress),  # compression is read from the bytes, not the name
])
def test_ndjson_plain_gzip_zstd(tmp_path: Path, name: str, encode: Any) -> None:
    path = tmp_path / name
    path.write_bytes(encode(_ndjson(EVENTS)))
    assert records(path) == list(enumerate(EVENTS))


def test_blank_lines_keep_line_numbers_and_a_last_line_needs_no_newline(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    lines = [json.dumps(e) for e in EVENTS]
    path.write_text(f"{lines[0]}\n\n  \n{lines[1]}\r\n{lines[2]}")
    assert [i for i, _ in records(path)] == [0, 3, 4]
    assert [e["properties"]["$insert_id"] for _, e in records(path)] == ["i0", "i1", "i2"]
    assert [i for i, _ in records(path, skip=3)] == [3, 4]
    assert records(path, skip=5) == []
    with pytest.raises(InputError, match="shorter than the checkpoint"):
        records(path, skip=6)


def test_ndjson_skip_lands_on_the_same_records_as_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson.gz"
    many = [{"event": "E", "properties": {"n": i, "pad": "x" * (i % 300)}} for i in range(7000)]
    path.write_bytes(gzip.compress(_ndjson(many)))
    full = records(path)
    for skip in (0, 1, 1999, 2000, 4321, 6999, 7000):
        assert records(path, skip=skip) == full[skip:]


def test_chunks_record_where_they_end(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(_ndjson([{"event": "E", "properties": {"n": i}} for i in range(4500)]) + b"\n\n")
    chunks = list(read_source(Source(str(path)), 3))
    assert [len(c) for c in chunks] == [2000, 2000, 500]
    assert [c.end for c in chunks] == [2000, 4000, 4502]  # two blank lines after the last record
    assert {c.source for c in chunks} == {3}


def test_an_overlong_line_is_one_refused_record_not_unbounded_memory(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 1000)
    monkeypatch.setattr(sources, "BLOCK", 256)
    path = tmp_path / "long.ndjson"
    path.write_bytes(_ndjson(EVENTS[:1]) + b'{"event":"' + b"x" * 5000 + b'"}\n' + _ndjson(EVENTS[1:2]))
    chunks = list(read_source(Source(str(path)), 0))
    raws = [r for c in chunks for r in (c.raws or [])]
    errors = [m for c in chunks for m in c.errors.values()]
    assert len(raws) == 3 and len(errors) == 1 and "line 2 is longer than" in errors[0]
    assert [i for c in chunks for i in c.indexes] == [0, 1, 2]


def test_json_arrays_stream_element_by_element(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(sources, "BLOCK", 7)  # strings and objects cut across reads
    tricky = [{"event": 'a "quoted" ] } [ { name', "properties": {"s": "back\\slash\\", "n": [1, {"x": "]"}]}},
              {"event": "E", "properties": {}}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(tricky, indent=2))
    assert [e for _, e in records(path)] == tricky
    path.write_text('[{"event":"a"}, 12, "str", null ,{"event":"b"}]')
    assert [e for _, e in records(path)] == [{"event": "a"}, 12, "str", None, {"event": "b"}]
    assert [i for i, _ in records(path, skip=2)] == [2, 3, 4]
    path.write_text('[{"event":"a"}, {"event":')
    with pytest.raises(InputError, match="cut short"):
        records(path)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=8), st.integers(), st.none(),
                                                            st.lists(st.text(max_size=3), max_size=3)),
                                max_size=4), max_size=12),
       st.integers(min_value=1, max_value=40))
def test_array_splitter_agrees_with_json_loads(values: list[Any], block: int) -> None:
    text = json.dumps(values).encode()
    stream = io.BufferedReader(io.BytesIO(text))  # type: ignore[arg-type]
    original = sources.BLOCK
    sources.BLOCK = block
    try:
        elements = [json.loads(e) for e in iter_array_elements(stream, "x")]
    finally:
        sources.BLOCK = original
    assert elements == values


def test_csv_rows_are_flat_and_skip_by_row(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text('\ufeffevent,distinct_id,properties.plan,note\nE,u1,pro,"multi\nline"\nF,u2,,x\nG,u3,free\n')
    rows = [(c.indexes, c.rows, c.flat) for c in read_source(Source(str(path)), 0)]
    assert rows == [([0, 1, 2], [{"event": "E", "distinct_id": "u1", "plan": "pro", "note": "multi\nline"},
                                 {"event": "F", "distinct_id": "u2", "note": "x"},
                                 {"event": "G", "distinct_id": "u3", "plan": "free"}], True)]
    assert [c.indexes for c in read_source(Source(str(path)), 0, skip=2)] == [[2]]
    tsv = tmp_path / "e.tsv.gz"
    tsv.write_bytes(gzip.compress(b"event\tn\nE\t1\n"))
    assert [c.rows for c in read_source(Source(str(tsv)), 0)] == [[{"event": "E", "n": "1"}]]


def test_parquet_reads_in_batches_and_skips_whole_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table({"event": [f"E{i}" for i in range(5000)], "n": list(range(5000))})
    pq.write_table(table, path, row_group_size=1500)
    chunks = list(read_source(Source(str(path)), 0))
    assert sum(len(c) for c in chunks) == 5000 and all(c.flat for c in chunks)
    skipped = [i for c in read_source(Source(str(path)), 0, skip=3100) for i in c.indexes]
    assert skipped == list(range(3100, 5000))
    rows = [r for c in read_source(Source(str(path)), 0, skip=4998) for r in c.rows or []]
    assert rows == [{"event": "E4998", "n": 4998}, {"event": "E4999", "n": 4999}]


def test_unknown_content_and_compressed_parquet_are_explained(tmp_path: Path) -> None:
    odd = tmp_path / "data.bin"
    odd.write_text("hello world")
    with pytest.raises(InputError, match="cannot tell the format"):
        list(read_source(Source(str(odd)), 0))
    pq.write_table(pa.table({"a": [1]}), tmp_path / "t.parquet")
    packed = tmp_path / "t.parquet.gz"
    packed.write_bytes(gzip.compress((tmp_path / "t.parquet").read_bytes()))
    with pytest.raises(InputError, match="Parquet"):
        list(read_source(Source(str(packed)), 0))


def test_expand_inputs_order_folders_globs_and_errors(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.ndjson", "d/a.csv.gz", "d/sub/c.parquet", "d/.hidden.json", "d/readme.md", "x1.jsonl",
                 "x2.jsonl"):
        (tmp_path / name).write_text("")
    found = [Path(s.path).relative_to(tmp_path).as_posix() for s in expand_inputs([str(tmp_path / "d"),
                                                                                    str(tmp_path / "x*.jsonl")])]
    assert found == ["d/a.csv.gz", "d/b.ndjson", "d/sub/c.parquet", "x1.jsonl", "x2.jsonl"]
    with pytest.raises(InputError, match="no file matches"):
        expand_inputs([str(tmp_path / "nothing*.csv")])
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.ndjson")])
    with pytest.raises(InputError, match="only once"):
        expand_inputs(["-", "-"])


def test_source_identity_follows_content_not_mtime(tmp_path: Path) -> None:
    path = tmp_path / "e.ndjson"
    path.write_bytes(_ndjson(EVENTS))
    before = Source(str(path)).identity()
    copy = tmp_path / "copy.ndjson"
    copy.write_bytes(path.read_bytes())
    assert {**Source(str(copy)).identity(), "path": before["path"]} == before
    path.write_bytes(_ndjson(EVENTS[::-1]))
    assert Source(str(path)).identity() != before


@given(st.lists(st.sampled_from([b"{}", b"x", b"", b" ", b"\t\r", b"\x0b\x0c", b" a ", b"\x1c"]), max_size=30),
       st.integers(0, 12), st.integers(0, 40), st.booleans())
def test_counting_records_in_c_and_in_python_agree(pieces: list[bytes], wanted: int, start: int, newline: bool) -> None:
    data = b"\n".join(pieces) + (b"\n" if newline else b"")
    start = min(start, len(data))
    counted = sources.next_records(data, start, wanted)
    assert counted == sources._next_records_in_python(data, start, wanted)
    records, lines, end = counted
    assert data[start:end].count(b"\n") == lines and records <= min(wanted, lines)


@pytest.mark.parametrize("compiled", [True, False])
@given(
    kinds=st.lists(st.sampled_from(["record", "blank", "spaces", "crlf"]), max_size=40),
    chunk_records=st.integers(1, 6),
    block=st.integers(8, 64),
    trailing_newline=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_ndjson_chunks_agree_with_reading_line_by_line(
    tmp_path_factory: Any, compiled: bool, kinds: list[str], chunk_records: int, block: int, trailing_newline: bool
) -> None:
    texts = {"record": '{"n":%d}', "blank": "", "spaces": " \t ", "crlf": '{"n":%d}\r'}
    lines = [texts[kind].replace("%d", str(i)) for i, kind in enumerate(kinds)]
    data = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    path = tmp_path_factory.mktemp("nd") / "e.ndjson"
    path.write_text(data)
    # the model: a newline ends a line; records are the lines with something in them;
    # chunks of chunk_records end just after their last record, the last one (possibly
    # empty) at the end of the last line
    lines = data.split("\n")[:-1] if data.endswith("\n") else data.split("\n") if data else []
    numbered = [(i, line.encode()) for i, line in enumerate(lines) if line.strip()]
    groups = [numbered[i : i + chunk_records] for i in range(0, len(numbered), chunk_records)]
    expected = [([i for i, _ in g], [raw for _, raw in g], g[-1][0] + 1) for g in groups if len(g) == chunk_records]
    rest = numbered[len(expected) * chunk_records :]
    if rest or lines:
        expected.append(([i for i, _ in rest], [raw for _, raw in rest], len(lines)))
    counting = sources.next_records if compiled else sources._next_records_in_python
    with (
        patch.object(sources, "CHUNK_RECORDS", chunk_records),
        patch.object(sources, "BLOCK", block),
        patch.object(sources, "next_records", counting),
    ):
        chunks = [(list(c.indexes), c.raws, c.end) for c in read_source(Source(str(path)), 0)]
    assert chunks == expected


def test_a_non_blocking_input_with_nothing_ready_is_not_taken_for_its_end() -> None:
    class NothingYet(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> None:
            return None

    reader = sources._RawReader(NothingYet())
    with pytest.raises(BlockingIOError):
        reader.readinto(bytearray(16))
    assert sources._RawReader(io.BytesIO(b"abc")).read() == b"abc"


def test_chunks_of_large_records_end_early_and_lose_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(sources, "CHUNK_MAX_BYTES", 100)
    monkeypatch.setattr(sources, "BLOCK", 64)
    lines = [json.dumps({"event": "E", "properties": {"pad": "x" * (i % 40)}}).encode() for i in range(50)]
    path = tmp_path / "e.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    chunks = list(read_source(Source(str(path)), 0))
    assert len(chunks) > 5  # ended by size, not by CHUNK_RECORDS
    assert all(len(c.text or b"") <= 100 + 64 + max(map(len, lines)) for c in chunks)
    assert [i for c in chunks for i in c.indexes] == list(range(50))
    assert [r for c in chunks for r in c.raws or []] == lines
    assert [c.end for c in chunks] == [c.indexes[-1] + 1 for c in chunks]
