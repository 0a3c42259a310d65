"""A durable log of acknowledged event batches, in front of the DuckDB file.

DuckDB blocks every commit while it checkpoints (writes its write-ahead log into the
database file): about a second under load for 128 MB of log. Requests must not wait for
that. So an /import is acknowledged once its batch is in this log and synced to disk; a
separate thread applies logged batches to DuckDB in large transactions and checkpoints
whenever it likes, stalling only itself.

The log is a directory of segment files. Each entry is a header (magic, sequence number,
length, CRC-32) and an Arrow IPC stream of rows with their project id. Recovery reads every
segment in order and applies the entries DuckDB has not recorded as applied; applying is
idempotent (latest copy wins), so an entry applied twice is harmless. A crash can leave a
torn entry only at the end of a segment, and such an entry was never acknowledged: recovery
skips it, and a reopened log, like one whose write just failed, starts a new segment, so
nothing is ever written after a torn entry.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from isal.isal_zlib import crc32  # zlib's CRC-32, five times faster: every logged byte passes it

from eventkeep.ingest.batch import read_rows, rows_buffer

_HEADER = struct.Struct("<4sQQI")  # magic, sequence number, payload length, CRC-32 of payload
_MAGIC = b"EKL1"
SEGMENT_BYTES = 64 * 1024 * 1024


class IngestLog:
    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._segments = sorted(directory.glob("*.log"))
        self.last_seq = 0
        for _, seq, _ in self._scan():
            self.last_seq = max(self.last_seq, seq)
        self._fd: int | None = None
        self._written = 0

    def _scan(self) -> Iterator[tuple[Path, int, bytes]]:
        for segment in self._segments:
            data = segment.read_bytes()
            offset = 0
            while offset + _HEADER.size <= len(data):
                magic, seq, length, crc = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                payload = data[start : start + length]
                if magic != _MAGIC or not length or len(payload) != length or crc32(payload) != crc:
                    break  # a torn tail: never acknowledged
                yield segment, seq, payload
                offset = start + length

    def entries_after(self, seq: int) -> Iterator[tuple[int, pa.Table]]:
        """Logged batches with a higher sequence number than `seq`, in order."""
        for _, entry_seq, payload in self._scan():
            if entry_seq > seq:
                yield entry_seq, read_rows(payload)

    def append(self, rows: pa.Table) -> int:
        """Write one entry and sync it to disk; its sequence number once it is durable."""
        payload = rows_buffer(rows)
        seq = self.last_seq + 1
        header = _HEADER.pack(_MAGIC, seq, payload.size, crc32(payload))
        if self._fd is None or self._written >= self._segment_bytes:
            self._start_segment(seq)
        assert self._fd is not None
        try:
            _write_all(self._fd, header)
            _write_all(self._fd, memoryview(payload))
            os.fdatasync(self._fd)
        except OSError:
            # The entry may be torn (a full disk, an I/O error). Nothing may follow a torn
            # entry in its segment, or recovery would never reach it: start a new one.
            os.close(self._fd)
            self._fd = None
            raise
        self._written += len(header) + payload.size
        self.last_seq = seq
        return seq

    def _start_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.directory / f"{first_seq:020d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._written = 0
        self._segments.append(path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)

    def release(self, applied_seq: int) -> None:
        """Delete the segments whose every entry is applied (never the one being written)."""
        while len(self._segments) > 1:
            following = int(self._segments[1].stem)
            if following - 1 > applied_seq:
                return
            self._segments.pop(0).unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
