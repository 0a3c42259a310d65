"""How eventkeep runs Python's cyclic garbage collector on its hot paths.

Ingesting, importing and exporting decode and build millions of small dicts and lists,
none of them in reference cycles: reference counting frees them all. With the default
thresholds the collector still runs every 700 allocations and, every so often, walks
every long-lived object as well, which cost several times the parsing itself on the
server and 7 % of the import tool's time. It is made to run far less often.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

BATCH_THRESHOLDS = (100_000, 50, 100)


def tune_for_batches() -> None:
    """For a process eventkeep owns (the server, its workers): objects made at start-up are
    frozen out of the collector's view for good, and it runs far less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*BATCH_THRESHOLDS)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """The same thresholds for a while, then the previous ones: the import tool's Python
    API runs in its caller's process, whose settings are the caller's."""
    previous = gc.get_threshold()
    gc.set_threshold(*BATCH_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
