"""What a store's single writer takes: event batches and profile work, in one queue.

Both stores run one writer thread (`GroupCommitter`) for events and profile updates, so
that their transactions never interleave; this module is the part they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eventkeep.errors import RecordError
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.profiles import ProfileUpdate
from eventkeep.store.base import StoreUnavailable
from eventkeep.store.group_commit import GroupCommitter


@dataclass
class ProfileWork:
    """One request's profile updates for one project, queued on the writer.

    The writer fills in `errors` (updates refused for profile limits) or `failure`.
    """

    project_id: int
    updates: Sequence[ProfileUpdate]
    errors: list[RecordError] = field(default_factory=list)
    failure: BaseException | None = None


WriteItem = tuple[int, ValidBatch] | ProfileWork


def split_writes(items: list[WriteItem]) -> tuple[list[tuple[int, ValidBatch]], list[ProfileWork]]:
    """Separate a commit group into event batches and profile work, each in queue order."""
    events = [item for item in items if not isinstance(item, ProfileWork)]
    profiles = [item for item in items if isinstance(item, ProfileWork)]
    return events, profiles


async def queue_profile_updates(
    writer: GroupCommitter[Any], project_id: int, updates: Sequence[ProfileUpdate]
) -> list[RecordError]:
    """Hand profile updates to the writer; return once applied and committed."""
    if not updates:
        return []
    work = ProfileWork(project_id, updates)
    await writer.append(work, len(updates))
    if work.failure is not None:
        raise StoreUnavailable(str(work.failure)) from work.failure
    return work.errors
