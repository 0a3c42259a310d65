"""The clean-batch path in C: a whole body of valid events to stored columns in one pass.

Most batches are clean: every event has a name, a time, a distinct_id and an `$insert_id`,
and no value is near a limit. For those, decoding into Python objects, checking them and
encoding the properties again costs ~10 µs per event; the compiled scanner
(`_cleanbatch.c`) reads the body once and writes the Arrow buffers directly. It accepts only
what `validate_events` accepts as a clean batch, and builds the same rows, byte for byte
(tests/ingest/test_fastpath.py holds the two together); for anything else it answers None
and the batch takes the Python path, which defines the rules. Without a C compiler at
install time the module is missing and every batch takes the Python path.
"""

from __future__ import annotations

from typing import Any

import msgspec

from eventkeep.ingest.batch import ValidBatch, rows_schema
from eventkeep.ingest.payload import EventShape
from eventkeep.ingest.validate import IngestContext, ingestion_properties

try:
    from eventkeep.ingest import _cleanbatch
except ImportError:  # pragma: no cover - built wherever the tests run
    _cleanbatch = None  # type: ignore[assignment]

_encode = msgspec.json.encode


def accept_clean_body(body: bytes, shape: EventShape, ctx: IngestContext) -> ValidBatch | None:
    """The stored batch of a body whose every event is clean, or None."""
    if _cleanbatch is None:
        return None
    added = ingestion_properties(ctx)
    tail = b"," + _encode(added)[1:-1] + b',"$mp_event_size":'
    scanned = _cleanbatch.check(body, shape == "json", ctx.endpoint == "track", ctx.now_ms, tail, _reserved(added))
    if scanned is None:
        return None
    count, *buffers, tokens = scanned
    import pyarrow as pa  # here, not at the top: see eventkeep.ingest.batch

    columns = [
        _strings(count, buffers[0], buffers[1]),
        _strings(count, buffers[2], buffers[3]),
        pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(buffers[4])]),
        _strings(count, buffers[5], buffers[6]),
        _strings(count, buffers[7], buffers[8]),
    ]
    return ValidBatch(
        rows=pa.Table.from_arrays(columns, schema=rows_schema()),
        tokens=tokens if tokens is not None else [None] * count,
        indexes=list(range(count)),
    )


def clean_lines(text: bytes, ctx: IngestContext) -> int | None:
    """How many events the server's clean-batch path would take, as they are, from this
    NDJSON text (None if not every one): the import tool's check of lines it sends as read.
    A blank line is not an event, so a count below the text's lines means one was blank."""
    return _clean_count(text, False, ctx) if text else None


def accepts_every_event(texts: list[bytes], ctx: IngestContext) -> bool:
    """Whether the server's clean-batch path would take every one of these events (each a
    JSON object's text) as it is: the import tool's check of a chunk it sends unchanged."""
    return bool(texts) and _clean_count(b"[" + b",".join(texts) + b"]", True, ctx) is not None


def _clean_count(body: bytes, array: bool, ctx: IngestContext) -> int | None:
    """The scanner's verdict alone (no columns built): how many events, or None."""
    if _cleanbatch is None:
        return None
    reserved = _reserved(ingestion_properties(ctx))
    return _cleanbatch.check(body, array, ctx.endpoint == "track", ctx.now_ms, b"", reserved, False)


def _reserved(added: dict[str, Any]) -> tuple[bytes, ...]:
    """The keys the server sets: an event that has one already goes the Python way."""
    return tuple(key.encode() for key in (*added, "$mp_event_size"))


def _strings(count: int, offsets: bytes, data: bytes) -> Any:
    import pyarrow as pa

    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
