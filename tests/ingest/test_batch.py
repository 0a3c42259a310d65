"""Rows as they travel between processes and rest in the ingest log."""

from __future__ import annotations

import pyarrow as pa

from eventkeep.ingest.batch import read_rows, rows_buffer, rows_schema, write_rows


def test_rows_buffer_is_the_ipc_stream_exactly_and_reads_back() -> None:
    many = 3000
    rows = pa.concat_tables([  # several chunks, as a logged group of requests has
        pa.table({
            "event": [f"E{i % 7}" for i in range(start, start + many)],
            "distinct_id": [f"u{i}" * (i % 5) for i in range(start, start + many)],
            "time_ms": list(range(start, start + many)),
            "insert_id": [f"i{i}" for i in range(start, start + many)],
            "properties": ['{"a":"' + "é" * (i % 40) + '"}' for i in range(start, start + many)],
        }, schema=rows_schema())
        for start in (0, many, 2 * many)
    ])
    sink = pa.BufferOutputStream()
    write_rows(rows, sink)
    buffer = rows_buffer(rows)
    assert buffer.size == sink.getvalue().size
    assert buffer.equals(sink.getvalue())
    assert read_rows(buffer).equals(rows)
    assert rows_buffer(rows.slice(0, 0)).size > 0  # the schema alone still makes a stream
