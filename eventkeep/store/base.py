"""The store interface: append a validated batch, scan it back, count it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventkeep.errors import RecordError
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.profiles import ProfileUpdate


class StoreUnavailable(Exception):
    """The store cannot take or give data right now; the caller should retry later."""


@dataclass(frozen=True)
class ScanQuery:
    """Which events to read. Times are epoch milliseconds, `to_ms` exclusive."""

    project_id: int
    from_ms: int | None = None
    to_ms: int | None = None
    events: tuple[str, ...] | None = None
    where: Any = None  # a parsed `where` expression; each store compiles it to its own SQL
    limit: int | None = None


class EventStore(Protocol):
    async def append(self, project_id: int, batch: ValidBatch) -> None:
        """Return only once the batch is durably committed, all of it or none of it."""
        ...

    def export_lines(
        self, query: ScanQuery, *, time_in_ms: bool = False, local_time_zone: str | None = None
    ) -> Iterator[bytes]:
        """Yield chunks of Mixpanel export JSONL, ordered by time.

        `local_time_zone` shifts exported `time` into that zone (Mixpanel's legacy mode).
        """
        ...

    def count(self, query: ScanQuery) -> int: ...

    async def update_profiles(
        self, project_id: int, updates: Sequence[ProfileUpdate]
    ) -> list[RecordError]:
        """Apply the updates in order, atomically; return once committed.

        Returns the updates refused for breaking a profile limit (they change nothing).
        """
        ...

    def get_profile(self, project_id: int, kind: str, profile_id: str) -> dict[str, Any] | None:
        """A profile's properties, or None. `kind`: "user", or `group_kind(group_key)`."""
        ...

    def close(self) -> None: ...
