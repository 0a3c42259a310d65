"""Input discovery and streaming readers: NDJSON, JSON arrays, CSV/TSV and Parquet.

Every reader yields `Chunk`s of a bounded number of records and never holds a whole file, so
memory stays flat however large the input is. Each record has a stable index within its
file (for NDJSON, its 0-based line number, blank lines included), which is what the
checkpoint records and what a resumed run skips to: skipping N lines is a `bytes.count`
over decompressed blocks, with no JSON parsing.

Compression is read from the data's first bytes (gzip or zstd magic), not from the name, so
a mis-named file still reads; gzip is inflated by ISA-L, zstd by
pyarrow (both already dependencies).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, Any, Literal, cast

Format = Literal["ndjson", "json", "csv", "tsv", "parquet"]
FORMATS: tuple[str, ...] = ("ndjson", "json", "csv", "tsv", "parquet")

BLOCK = 1 << 20
CHUNK_RECORDS = 2000
# A chunk of NDJSON ends early past this many bytes (events of up to 1 MB each): it could
# not go as one request anyway, and 2000 such lines would all be held at once.
CHUNK_MAX_BYTES = 16 << 20
# A line this long cannot be a valid event (the limit is 1 MB); stop buffering it.
MAX_LINE_BYTES = 8 << 20

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"

_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")
_EXTENSIONS: dict[str, Format] = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".ldjson": "ndjson",
    ".json": "json",  # sniffed: an array, or one object per line
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class InputError(Exception):
    """An input that cannot be read as asked: reported with its name, exit status 2."""


@dataclass(frozen=True)
class Source:
    """One input: a path, or `-` for standard input."""

    path: str

    @property
    def is_stdin(self) -> bool:
        return self.path == "-"

    @property
    def label(self) -> str:
        return "<stdin>" if self.is_stdin else self.path

    def size(self) -> int | None:
        if self.is_stdin:
            return None
        try:
            return os.path.getsize(self.path)
        except OSError:
            return None

    def identity(self) -> dict[str, Any]:
        """What a checkpoint remembers of this input to notice that it changed.

        Size plus a hash of the first and last 64 KiB: content, not modification time, so a
        copy of the same file still resumes, while an appended or rewritten one does not.
        """
        if self.is_stdin:
            return {"path": "-"}
        path = os.path.abspath(self.path)
        size = os.path.getsize(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            digest.update(f.read(65536))
            if size > 131072:
                f.seek(size - 65536)
                digest.update(f.read(65536))
        return {"path": path, "size": size, "sample_sha256": digest.hexdigest()}


def _known_extension(name: str) -> bool:
    lower = name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    return os.path.splitext(lower)[1] in _EXTENSIONS


def expand_inputs(args: Sequence[str]) -> list[Source]:
    """Files, folders (recursively, known extensions only), globs and `-`, in a stable order.

    The order is part of the checkpoint's meaning, so folders and globs are sorted.
    """
    sources: list[Source] = []
    for arg in args:
        if arg == "-":
            sources.append(Source("-"))
        elif os.path.isdir(arg):
            found: list[str] = []
            for root, dirs, files in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(
                    os.path.join(root, f) for f in files if not f.startswith(".") and _known_extension(f)
                )
            if not found:
                raise InputError(f"{arg}: the folder holds no .ndjson, .jsonl, .json, .csv, .tsv or .parquet files")
            sources.extend(Source(p) for p in sorted(found))
        elif os.path.exists(arg):
            sources.append(Source(arg))
        elif glob.has_magic(arg):
            matches = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"{arg}: no file matches")
            sources.extend(Source(p) for p in matches)
        else:
            raise InputError(f"{arg}: no such file or folder")
    if sum(1 for s in sources if s.is_stdin) > 1:
        raise InputError("standard input (-) can be read only once")
    return sources


class Chunk:
    """Up to CHUNK_RECORDS records of one source, as raw JSON texts or decoded rows.

    `indexes[i]` is the record index of item i; `end` is the record index just after the
    records this chunk covers (blank lines included), so positions advance over them too.

    NDJSON comes as `text`: the chunk's lines as read, newlines between them, from line
    `end - lines`. The import sends a clean chunk's text as it is; its records (`raws`,
    `indexes`) are split out of it only if something asks for them.
    """

    __slots__ = ("_indexes", "_raws", "end", "errors", "flat", "kind", "lines", "records", "rows", "source", "text")

    def __init__(
        self,
        source: int,
        end: int,
        indexes: Sequence[int] | None = None,
        raws: list[bytes] | None = None,
        rows: list[Any] | None = None,
        errors: dict[int, str] | None = None,
        flat: bool = False,
        kind: str = "line",
    ) -> None:
        self.source = source
        self.end = end
        self._indexes = indexes
        self._raws = raws
        self.rows = rows
        # item position -> why the record could not even be read (e.g. a line over MAX_LINE_BYTES)
        self.errors: dict[int, str] = errors if errors is not None else {}
        self.flat = flat  # rows from CSV/Parquet: always flat, nulls mean "absent"
        self.kind = kind  # how records are named in messages: line, element, row
        self.text: bytes | None = None
        self.lines = 0
        self.records = 0  # of a text chunk (the others count their indexes)

    @classmethod
    def of_text(cls, source: int, first: int, text: bytes, lines: int, records: int) -> Chunk:
        """`lines` NDJSON lines from line `first`, `records` of them not blank."""
        chunk = cls(source, first + lines)
        chunk.text, chunk.lines, chunk.records = text, lines, records
        if records == lines:
            chunk._indexes = range(first, first + lines)
        return chunk

    @property
    def indexes(self) -> Sequence[int]:
        if self._indexes is None:
            self._split()
        return self._indexes  # type: ignore[return-value]

    @property
    def raws(self) -> list[bytes] | None:
        if self._raws is None and self.text is not None:
            self._split()
        return self._raws

    @property
    def has_texts(self) -> bool:
        """Whether the records are JSON texts (`raws`), without splitting them out."""
        return self._raws is not None or self.text is not None

    def _split(self) -> None:
        assert self.text is not None
        first = self.end - self.lines
        lines = self.text.split(b"\n") if self.lines else []
        if self.records == self.lines:  # no blank line: its indexes are a range already
            self._raws = lines
            return
        numbers = [first + i for i, line in enumerate(lines) if line.strip()]
        self._indexes, self._raws = numbers, [lines[n - first] for n in numbers]

    def __len__(self) -> int:
        return len(self._indexes) if self._indexes is not None else self.records


class ByteCounter:
    """Compressed bytes read so far, across all inputs, for progress and ETA."""

    def __init__(self) -> None:
        self.value = 0


class _RawReader(io.RawIOBase):
    """Any object with read() (a file, a gzip file, a pyarrow stream) as a raw stream, so
    that a BufferedReader, which has peek, can sit on it. It adds what it reads to `counter`
    if given, and closes the object when closed if it `owns` it (never standard input)."""

    def __init__(self, inner: Any, *, counter: ByteCounter | None = None, owns: bool = True) -> None:
        self._inner = inner
        self._counter = counter
        self._owns = owns

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        readinto = getattr(self._inner, "readinto", None)
        if readinto is not None:  # straight into the buffer: one copy of every byte less
            n = readinto(buffer)
            if n is None:  # a non-blocking input with nothing ready yet is not at its end
                raise BlockingIOError("the input is non-blocking and had nothing to read")
        else:
            data = self._inner.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        if self._counter is not None:
            self._counter.value += n
        return n

    def close(self) -> None:
        try:
            if self._owns:
                self._inner.close()
        finally:
            super().close()


def _format_from_name(path: str) -> tuple[Format | None, bool]:
    lower = path.lower()
    compressed = False
    for suffix in _COMPRESSED_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            compressed = True
            break
    return _EXTENSIONS.get(os.path.splitext(lower)[1]), compressed


def _open_decompressed(source: Source, stack: ExitStack, counter: ByteCounter) -> tuple[io.BufferedReader[Any], str]:
    """The decompressed byte stream of a source and the compression found (by magic)."""
    if source.is_stdin:
        inner: IO[bytes] = sys.stdin.buffer
    else:
        try:
            inner = stack.enter_context(open(source.path, "rb"))  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"{source.label}: {exc.strerror}") from None
    raw: io.BufferedReader[Any] = io.BufferedReader(_RawReader(inner, counter=counter, owns=False), BLOCK)
    head = raw.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        from isal import igzip

        # In this thread: a decompressing thread measured slower (GIL hand-offs) than
        # ISA-L inline, which inflates at over 1 GB/s.
        adapter = _RawReader(igzip.IGzipFile(fileobj=raw, mode="rb"))
        stack.callback(adapter.close)
        return io.BufferedReader(adapter, BLOCK), "gzip"
    if head.startswith(ZSTD_MAGIC):
        import pyarrow as pa

        adapter = _RawReader(pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd"))
        stack.callback(adapter.close)
        return io.BufferedReader(adapter, BLOCK), "zstd"
    return raw, "none"


def _sniff(stream: io.BufferedReader, source: Source, named: Format | None) -> Format:
    head = stream.peek(65536)[:65536].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if named == "json" or named is None:
        if head.startswith(b"["):
            return "json"
        if head.startswith(b"{") or not head:
            return "ndjson"
    if named is None:
        raise InputError(
            f"{source.label}: cannot tell the format (not JSON); give --format csv, tsv, ndjson, json or parquet"
        )
    return named


def read_source(
    source: Source,
    source_index: int,
    *,
    fmt: str = "auto",
    skip: int = 0,
    counter: ByteCounter | None = None,
    csv_delimiter: str | None = None,
) -> Iterator[Chunk]:
    """Stream a source's records in chunks, starting after the first `skip` records."""
    counter = counter or ByteCounter()
    named = None if source.is_stdin else _format_from_name(source.path)[0]
    chosen: Format | None = named if fmt == "auto" else cast(Format, fmt)
    if not source.is_stdin and (chosen == "parquet" or (fmt == "auto" and _is_parquet(source.path))):
        yield from _parquet_chunks(source, source_index, skip, counter)
        return
    if chosen == "parquet":
        raise InputError("Parquet cannot be read from standard input (it needs random access); give a file")
    with ExitStack() as stack:
        stream, compression = _open_decompressed(source, stack, counter)
        actual = _sniff(stream, source, chosen) if fmt == "auto" else chosen
        if actual == "parquet":
            where = "standard input" if source.is_stdin else f"a {compression}-compressed file"
            raise InputError(f"{source.label}: Parquet in {where} cannot be read; give a plain .parquet file")
        if actual == "ndjson":
            yield from _ndjson_chunks(stream, source, source_index, skip)
        elif actual == "json":
            yield from _array_chunks(stream, source, source_index, skip)
        else:
            delimiter = csv_delimiter or ("\t" if actual == "tsv" else ",")
            yield from _csv_chunks(stream, source, source_index, skip, delimiter)


def _is_parquet(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def _skip_lines(stream: io.BufferedReader, source: Source, skip: int) -> bytes:
    """Consume `skip` lines; return the bytes read past the last skipped newline."""
    seen = 0
    tail = False  # bytes after the last newline seen: an unterminated last line
    while seen < skip:
        block = stream.read(BLOCK)
        if not block:
            if tail and seen + 1 == skip:
                return b""
            raise InputError(f"{source.label}: shorter than the checkpoint says ({seen} of {skip} lines)")
        count = block.count(b"\n")
        if seen + count < skip:
            seen += count
            tail = block.rfind(b"\n") < len(block) - 1 if count else tail or bool(block)
            continue
        pos = -1
        for _ in range(skip - seen):
            pos = block.index(b"\n", pos + 1)
        return block[pos + 1 :]
    return b""


def _ndjson_chunks(stream: io.BufferedReader, source: Source, source_index: int, skip: int) -> Iterator[Chunk]:
    """Chunks of CHUNK_RECORDS records (fewer past CHUNK_MAX_BYTES), each ending just after
    its last record's line (the last chunk, possibly of blank lines only, at the input's
    end), each one slice of the bytes read: splitting every line out and joining them again
    cost 0.5 s per million."""
    line = skip  # the first line of the chunk being gathered
    data = _skip_lines(stream, source, skip) if skip else b""
    start = scanned = 0  # where that chunk starts in `data`, and how far it is counted
    records = lines = 0  # what it holds so far
    final = discarding = False
    while True:
        found, seen, scanned = next_records(data, scanned, CHUNK_RECORDS - records)
        records += found
        lines += seen
        if records == CHUNK_RECORDS or (records and scanned - start > CHUNK_MAX_BYTES):
            yield Chunk.of_text(source_index, line, data[start : scanned - 1], lines, records)
            line, start, records, lines = line + lines, scanned, 0, 0
            continue
        if final:
            break
        block = stream.read(BLOCK)
        if discarding:  # the rest of an overlong line, up to its newline
            cut = block.find(b"\n")
            if cut < 0 and block:
                continue
            discarding = False
            block = block[cut + 1 :] if cut >= 0 else b""
        if not block:
            final = True
            if len(data) > scanned:
                data += b"\n"  # a last line needs no newline
            continue
        data = data[start:] + block if start < len(data) else block
        scanned -= start
        start = 0
        if len(data) - scanned > MAX_LINE_BYTES and data.find(b"\n", scanned) < 0:
            # a line this long is refused unread, and not held: the rest of it is skipped
            if lines:
                yield Chunk.of_text(source_index, line, data[: scanned - 1], lines, records)
            overlong = line + lines
            message = f"line {overlong + 1} is longer than {MAX_LINE_BYTES} bytes; an event must be smaller than 1MB"
            yield Chunk(source_index, overlong + 1, [overlong], raws=[b""], errors={0: message})
            line, data, scanned, records, lines = overlong + 1, b"", 0, 0, 0
            discarding = True
    if lines or line > skip:
        yield Chunk.of_text(source_index, line, data[start : max(start, scanned - 1)], lines, records)


def _next_records_in_python(data: bytes, start: int, wanted: int) -> tuple[int, int, int]:
    """next_records where the compiled module is missing (see eventkeep.ingest._cleanbatch)."""
    records = lines = 0
    while records < wanted:
        newline = data.find(b"\n", start)
        if newline < 0:
            break
        lines += 1
        records += bool(data[start:newline].strip())
        start = newline + 1
    return records, lines, start


try:
    from eventkeep.ingest._cleanbatch import next_records
except ImportError:  # pragma: no cover - built wherever the tests run
    next_records = _next_records_in_python


# A whole JSON string (escapes included), a lone quote (a string cut by the block end),
# or a bracket: everything else between them is skipped by the regex engine in C.
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|["\[\]{}]')
_QUOTE, _OPEN_OBJ, _OPEN_ARR, _CLOSE_OBJ, _CLOSE_ARR = 0x22, 0x7B, 0x5B, 0x7D, 0x5D


def iter_array_elements(stream: io.BufferedReader, label: str) -> Iterator[bytes]:
    """The raw text of each top-level element of a JSON array, without parsing values.

    Only strings and brackets are visited, to know where elements begin and end; the
    elements themselves are decoded in batches later. Scalars at the top level are
    yielded too (they become 'not an event' rejects, never silently skipped).
    """
    buf = b""
    pos = 0
    depth = 0
    start = -1
    gap = 0
    opened = closed = eof = False
    while not closed:
        if not eof:
            block = stream.read(BLOCK)
            if block:
                buf += block
            else:
                eof = True
        need_more = False
        for m in _TOKENS.finditer(buf, pos):
            t0 = m.start()
            c = buf[t0]
            if c == _QUOTE and m.end() - t0 == 1:
                if eof:
                    raise InputError(f"{label}: the JSON array ends inside a string")
                pos = t0
                need_more = True
                break
            pos = m.end()
            if not opened:
                if c != _OPEN_ARR or buf[:t0].strip(b"\xef\xbb\xbf \t\r\n"):
                    raise InputError(f"{label}: not a JSON array")
                opened, depth, gap = True, 1, pos
                continue
            if depth == 1:
                if c in (_OPEN_OBJ, _OPEN_ARR):
                    yield from _gap_elements(buf[gap:t0])
                    start, depth = t0, 2
                elif c == _QUOTE:
                    yield from _gap_elements(buf[gap:t0])
                    yield m.group()
                    gap = pos
                elif c == _CLOSE_ARR:
                    yield from _gap_elements(buf[gap:t0])
                    closed = True
                    break
                else:
                    raise InputError(f"{label}: unbalanced '}}' in the JSON array")
            elif c in (_OPEN_OBJ, _OPEN_ARR):
                depth += 1
            elif c in (_CLOSE_OBJ, _CLOSE_ARR):
                depth -= 1
                if depth == 1:
                    yield buf[start:pos]
                    start = -1
                    gap = pos
        if closed:
            break
        if not need_more:
            pos = len(buf)
        keep = min(x for x in (start, gap, pos) if x >= 0) if opened else 0
        if keep:
            buf = buf[keep:]
            pos -= keep
            gap -= keep
            if start >= 0:
                start -= keep
        if eof and not need_more:
            if not opened:
                if buf.strip():
                    raise InputError(f"{label}: not a JSON array")
                return
            raise InputError(f"{label}: the JSON array is cut short (no closing ']')")


def _gap_elements(text: bytes) -> Iterator[bytes]:
    """Scalars between elements (`, 12, null,`): each one is an element of its own."""
    if text.strip(b" \t\r\n,"):
        for piece in text.split(b","):
            piece = piece.strip()
            if piece:
                yield piece


def _array_chunks(stream: io.BufferedReader, source: Source, source_index: int, skip: int) -> Iterator[Chunk]:
    index = 0
    raws: list[bytes] = []
    indexes: list[int] = []
    for element in iter_array_elements(stream, source.label):
        if index >= skip:
            raws.append(element)
            indexes.append(index)
        index += 1
        if len(raws) >= CHUNK_RECORDS:
            yield Chunk(source_index, index, indexes, raws=raws, kind="element")
            raws, indexes = [], []
    if index < skip:
        raise InputError(f"{source.label}: shorter than the checkpoint says ({index} of {skip} elements)")
    if raws or index > skip:
        yield Chunk(source_index, index, indexes, raws=raws, kind="element")


def _csv_chunks(
    stream: io.BufferedReader, source: Source, source_index: int, skip: int, delimiter: str
) -> Iterator[Chunk]:
    # surrogateescape keeps bad bytes visible, so validation refuses just those rows.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [_column_name(h) for h in header]
        width = len(names)
        index = 0
        rows: list[Any] = []
        indexes: list[int] = []
        errors: dict[int, str] = {}
        for row in reader:
            if index < skip:
                index += 1
                continue
            if len(row) > width:
                errors[len(rows)] = f"row {index + 1} has {len(row)} cells but the header has {width}"
            rows.append({k: v for k, v in zip(names, row, strict=False) if v != ""})
            indexes.append(index)
            index += 1
            if len(rows) >= CHUNK_RECORDS:
                yield Chunk(source_index, index, indexes, rows=rows, errors=errors, flat=True, kind="row")
                rows, indexes, errors = [], [], {}
        if index < skip:
            raise InputError(f"{source.label}: shorter than the checkpoint says ({index} of {skip} rows)")
        if rows or index > skip:
            yield Chunk(source_index, index, indexes, rows=rows, errors=errors, flat=True, kind="row")
    except csv.Error as exc:
        raise InputError(f"{source.label}: line {reader.line_num}: {exc}") from None


def _column_name(name: str) -> str:
    """`properties.plan` (a flattened export's column) means the property `plan`."""
    name = name.strip()
    return name[len("properties.") :] if name.startswith("properties.") else name


def _parquet_chunks(source: Source, source_index: int, skip: int, counter: ByteCounter) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise InputError(f"{source.label}: not a readable Parquet file: {exc}") from None
    with parquet:
        meta = parquet.metadata
        if skip > meta.num_rows:
            raise InputError(f"{source.label}: shorter than the checkpoint says ({meta.num_rows} of {skip} rows)")
        total = max(meta.num_rows, 1)
        size = source.size() or 0
        groups: list[int] = []
        index = 0
        for g in range(meta.num_row_groups):
            rows_in_group = meta.row_group(g).num_rows
            if not groups and index + rows_in_group <= skip:
                index += rows_in_group
                continue
            groups.append(g)
        counter.value += size * index // total
        if not groups:
            return
        for batch in parquet.iter_batches(batch_size=CHUNK_RECORDS, row_groups=groups):
            rows = batch.to_pylist()
            first = index
            index += len(rows)
            counter.value += size * len(rows) // total
            if first < skip:
                rows = rows[skip - first :]
                first = skip
            if not rows:
                continue
            yield Chunk(source_index, index, list(range(first, index)), rows=rows, flat=True, kind="row")
