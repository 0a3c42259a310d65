"""How eventkeep's own processes manage memory on their hot paths: Python's cyclic
garbage collector, and glibc's allocator.

Ingesting, importing and exporting decode and build millions of small dicts and lists,
none of them in reference cycles: reference counting frees them all. With the default
thresholds the collector still runs every 700 allocations and, every so often, walks
every long-lived object as well, which cost several times the parsing itself on the
server and 7 % of the import tool's time. It is made to run far less often.
"""

from __future__ import annotations

import ctypes
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


def keep_freed_memory() -> None:
    """Let glibc keep the memory a batch frees for the next one.

    The server's workers and the import tool allocate and free the same few megabytes for
    every batch. By default glibc gives freed memory back to the system and maps large
    blocks afresh, so each batch paid again for the pages, as kernel time (half of a
    worker's, bench/RESULTS.md, session 5; the import tool's 0.5 s per million events
    became 0.2, session 9). Such a process now keeps up to 128 MB it has freed. For
    processes eventkeep owns only; elsewhere than glibc this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_trim_threshold, 128 * 1024 * 1024)
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)  # glibc's largest on 64-bit systems
