"""Where the per-event work of a request runs: inline, or in a pool of worker processes.

Python runs one thread at a time, so a server that decodes and checks events on its event
loop uses one core however many it has. Large bodies go to worker processes instead
(`check_events` is a pure function over picklable data); the event loop only moves bytes
and the batch comes back in columns ready for the store. Small bodies, the usual SDK
request, are checked inline, where a process hop would cost more than the work.

The pool starts with the server (`start`); until its workers are ready (about a second),
requests are checked inline rather than made to wait. A worker that dies (killed, out of
memory) costs nothing: the request is checked inline and the pool is started afresh.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from eventkeep.ingest.compression import is_compressed
from eventkeep.ingest.pipeline import CheckedEvents, EventRequest, check_events

log = logging.getLogger("eventkeep.ingest")

# Below this many (uncompressed) bytes a body is checked inline: about 100 events.
INLINE_MAX_BYTES = 32 * 1024
# Event batches inflate six to twenty times under gzip: a compressed body counts as eight
# times its size (a bomb that goes inline still stops at the 10 MB limit).
_COMPRESSION_RATIO = 8


def _start_worker() -> None:
    # The server handles Ctrl-C and shuts the pool down; workers should not also react.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The same collector tuning as the server: request data is acyclic.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _ready() -> bool:
    return True


def _likely_small(request: EventRequest) -> bool:
    size = len(request.body)
    if is_compressed(request.content_encoding):
        size *= _COMPRESSION_RATIO
    return size < INLINE_MAX_BYTES


class EventCheckers:
    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._warming: list[Future[bool]] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the workers now, in the background, so the first large bodies find them."""
        if self.processes > 0:
            self._running_pool()

    async def check(self, request: EventRequest) -> CheckedEvents:
        if self.processes <= 0 or _likely_small(request):
            return check_events(request)
        pool = self._running_pool()
        if pool is None:
            return check_events(request)
        try:
            return await asyncio.wrap_future(pool.submit(check_events, request))
        except BrokenProcessPool:
            log.warning("an ingest worker process died; checking this request inline and restarting the pool")
            self._discard(pool)
            return check_events(request)

    def _running_pool(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._closed:
                return None
            if self._pool is None:
                # Spawned, not forked: the server has threads and open database handles.
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    self.processes, mp_context=context, initializer=_start_worker
                )
                self._warming = [self._pool.submit(_ready) for _ in range(self.processes)]
            if self._warming:
                if not all(future.done() for future in self._warming):
                    return None
                self._warming = []
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
