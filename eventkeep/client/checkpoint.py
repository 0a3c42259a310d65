"""Resumable imports: a contiguous acknowledged watermark, saved atomically.

Batches are sent concurrently and finish out of order, so "how far are we" is the end of
the longest prefix of batches that have *all* been acknowledged: the watermark. It is a
position (input number, record index); every record before it has been either imported,
rejected (and written to the rejects file) or deliberately ignored. A batch that failed
for good stops the watermark, so the next run starts again from it.

A run killed at any moment leaves a checkpoint no later than the truth. The next run with
the same arguments skips to the watermark and re-sends what follows; events sent twice
that way carry the same `$insert_id` and are absorbed by the server's deduplication.

The checkpoint is tied to the job: the inputs' content samples, the shape options and the
destination. If any of those changed, resuming would skip the wrong records, so the run
refuses and says what changed (or starts over with --restart).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Position = tuple[int, int]
VERSION = 1
MAX_REASONS = 50
OTHER_REASON = "(other reasons)"


class CheckpointMismatch(Exception):
    """The checkpoint belongs to a different job; resuming from it would lose events."""


@dataclass
class Counts:
    """Event counts for a stretch of input; added up per batch, per run and per job."""

    read: int = 0  # records read (blank lines are not records)
    sent: int = 0  # events in batches the server acknowledged
    imported: int = 0  # as the server counted them
    ignored: int = 0  # `$ignore` events: dropped by the server's rules, never sent
    failed: int = 0  # events in batches given up on (not delivered; the next run retries them)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> events

    def reject(self, reason: str, n: int = 1) -> None:
        if reason not in self.rejected and len(self.rejected) >= MAX_REASONS:
            reason = OTHER_REASON
        self.rejected[reason] = self.rejected.get(reason, 0) + n

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def add(self, other: Counts) -> None:
        self.read += other.read
        self.sent += other.sent
        self.imported += other.imported
        self.ignored += other.ignored
        self.failed += other.failed
        for reason, n in other.rejected.items():
            self.reject(reason, n)

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "sent": self.sent,
            "imported": self.imported,
            "ignored": self.ignored,
            "failed": self.failed,
            "rejected": dict(self.rejected),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counts:
        return cls(
            int(data.get("read", 0)),
            int(data.get("sent", 0)),
            int(data.get("imported", 0)),
            int(data.get("ignored", 0)),
            int(data.get("failed", 0)),
            {str(k): int(v) for k, v in dict(data.get("rejected", {})).items()},
        )


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half.

    Temporary file in the same folder, fsync, rename over the target, fsync the folder.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def job_digest(job: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()


def default_path(kind: str, job: dict[str, Any]) -> Path:
    """Where a checkpoint lives when none was named: the user's cache, keyed by the job."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "eventkeep" / "checkpoints" / f"{kind}-{job_digest(job)[:20]}.json"


@dataclass
class Resume:
    position: Position
    counts: Counts
    retries: int
    complete: bool


class CheckpointFile:
    """One job's checkpoint: loaded once, saved whenever the watermark moves (throttled)."""

    def __init__(self, path: Path, job: dict[str, Any], min_interval: float = 1.0) -> None:
        self.path = path
        self.job = job
        self.digest = job_digest(job)
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._last_save = 0.0
        self._saved: tuple[Position, bool] | None = None

    def load(self) -> Resume | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            position = (int(data["position"]["input"]), int(data["position"]["record"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointMismatch(f"{self.path}: not a checkpoint this version can read ({exc})") from None
        if data.get("digest") != self.digest:
            raise CheckpointMismatch(f"{self.path} was written for a different job: {self._difference(data.get('job'))}")
        return Resume(
            position,
            Counts.from_json(data.get("counts", {})),
            int(data.get("retries", 0)),
            bool(data.get("complete", False)),
        )

    def _difference(self, old: Any) -> str:
        if not isinstance(old, dict):
            return "its description is missing"
        changes = []
        old_sources, new_sources = old.get("sources", []), self.job.get("sources", [])
        if len(old_sources) != len(new_sources):
            changes.append(f"{len(old_sources)} inputs then, {len(new_sources)} now")
        else:
            for before, now in zip(old_sources, new_sources, strict=True):
                if before != now:
                    name = now.get("path", "?")
                    if before.get("path") != name:
                        changes.append(f"input {before.get('path')} is now {name}")
                    else:
                        changes.append(f"input {name} changed (size or content)")
        for key in sorted(set(old) | set(self.job)):
            if key != "sources" and old.get(key) != self.job.get(key):
                changes.append(f"{key} changed")
        return "; ".join(changes) or "the job description differs"

    def save(
        self,
        position: Position,
        counts: Counts,
        retries: int,
        *,
        complete: bool = False,
        force: bool = False,
        before: Callable[[], None] | None = None,
    ) -> None:
        """Save unless one was saved within `min_interval`; `before` runs first (it makes the
        rejects file durable, so no checkpoint ever covers a refusal not yet on disk)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_save < self.min_interval:
                return
            if not force and self._saved == (position, complete):
                return
            if before is not None:
                before()
            data = {
                "version": VERSION,
                "digest": self.digest,
                "job": self.job,
                "position": {"input": position[0], "record": position[1]},
                "counts": counts.to_json(),
                "retries": retries,
                "complete": complete,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            atomic_write(self.path, json.dumps(data, indent=1).encode())
            self._last_save = now
            self._saved = (position, complete)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Watermark:
    """The contiguous acknowledged prefix of batches, advanced as they finish in any order."""

    def __init__(
        self,
        start: Position,
        committed: Counts,
        on_advance: Callable[[Position, Counts], None] | None = None,
    ) -> None:
        self.position = start
        self.committed = committed
        self._on_advance = on_advance
        self._lock = threading.Lock()
        self._ends: dict[int, Position] = {}
        self._done: dict[int, tuple[bool, Counts]] = {}
        self._next = 0
        self.blocked = False  # a batch failed for good: the watermark stays before it

    def register(self, seq: int, end: Position) -> None:
        with self._lock:
            self._ends[seq] = end

    def finish(self, seq: int, ok: bool, counts: Counts) -> None:
        with self._lock:
            self._done[seq] = (ok, counts)
            moved = False
            while self._next in self._done:
                ok_next, counts_next = self._done[self._next]
                if not ok_next:
                    self.blocked = True
                    break
                del self._done[self._next]
                self.position = self._ends.pop(self._next)
                self.committed.add(counts_next)
                self._next += 1
                moved = True
            position = self.position
            committed = Counts.from_json(self.committed.to_json()) if moved else self.committed
        if moved and self._on_advance is not None:
            self._on_advance(position, committed)
