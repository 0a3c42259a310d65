"""The rejects file: one NDJSON line per refused event, exactly once across resumed runs.

Each line names the input and the record's index in it, the field and the message (the
validator's or the server's own words), the event's `$insert_id` and the event itself (or,
for a line that is not JSON, its text). Refusals are written before the batch covering
them can be acknowledged, so every line for a record before the checkpoint's watermark was
written before that checkpoint. On resume the file is therefore cut back to exactly those
lines: the records after the watermark are read again and their refusals written again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import IO, Any

import msgspec
import orjson

from eventkeep.client.checkpoint import Position
from eventkeep.client.shape import encode_event


def reason_key(field: str, message: str) -> str:
    """How refusals are grouped in the summary: parse errors by kind, others by message."""
    if " is not valid JSON" in message:
        return f"{field}: not valid JSON"
    if " is longer than " in message and "1MB" in message:
        return f"{field}: line too long"
    return f"{field}: {message}"


class RejectsWriter:
    """Thread-safe appender; without a path it only counts (the summary still reports)."""

    def __init__(self, path: str | None, labels: list[str]) -> None:
        self.path = Path(path) if path else None
        self.labels = labels
        self.written = 0
        self.examples: list[str] = []
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None

    def open(self, resume_at: Position | None) -> None:
        """Start afresh, or keep only the lines for records before the resume position."""
        if self.path is None:
            return
        if resume_at is not None and self.path.exists():
            self._truncate_to(resume_at)
            self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()

    def _truncate_to(self, position: Position) -> None:
        assert self.path is not None
        kept = 0
        tmp = self.path.with_name(self.path.name + ".resume.tmp")
        with open(self.path, "rb") as src, open(tmp, "wb") as out:
            for line in src:
                if not line.strip():
                    continue
                try:
                    entry = msgspec.json.decode(line)
                    where = (int(entry["input"]), int(entry["index"]))
                except (msgspec.DecodeError, KeyError, TypeError, ValueError):
                    continue  # a line cut by the kill: its record is after the watermark
                if where < position:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    kept += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self.written = kept

    def write(
        self,
        position: Position,
        field: str,
        message: str,
        insert_id: str | None,
        event: Any = None,
        raw: bytes | None = None,
        stage: str = "validation",
    ) -> None:
        entry: dict[str, Any] = {
            "file": self.labels[position[0]] if position[0] < len(self.labels) else "<events>",
            "input": position[0],
            "index": position[1],
            "field": field,
            "message": message,
            "insert_id": insert_id,
            "stage": stage,
        }
        if event is not None:
            entry["event"] = event
        elif raw is not None:
            entry["raw"] = raw.decode("utf-8", "replace")
        with self._lock:
            if len(self.examples) < 3:
                self.examples.append(f"{entry['file']} #{position[1]}: {field}: {message}")
            if self._file is None:
                return
            try:
                line = orjson.dumps(entry)
            except (TypeError, orjson.JSONEncodeError):
                line = encode_event(entry)
            self._file.write(line + b"\n")
            self.written += 1

    def flush(self) -> None:
        """Make refusals durable before a checkpoint that covers them is saved."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None

