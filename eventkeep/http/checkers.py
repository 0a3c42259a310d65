"""Where the per-event work of a request runs: inline, or in a pool of worker processes.

Python runs one thread at a time, so a server that decodes and checks events on its event
loop uses one core however many it has. Large bodies go to worker processes instead
(`check_events` is a pure function over picklable data); the event loop only moves bytes
and the batch comes back in columns ready for the store. Small bodies, the usual SDK
request, are checked inline, where a process hop would cost more than the work.

The pool starts with the server, which waits for its workers (about a second) before it
listens (`start`). Until a restarted pool is ready, requests are checked inline rather than
made to wait. A worker that dies (killed, out of memory) costs nothing: the request is
checked inline and the pool is started afresh.

The workers run at a lower scheduling priority than the server process. Under full load
the store's writer, which applies what the workers checked, then always gets the CPU it
needs: acknowledgements slow to the pace at which the store can apply them, instead of
racing ahead until the unapplied backlog is full and every request waits out a
checkpoint (bench/RESULTS.md, session 4: 3M events at full load, the slowest request took
2.1 s at equal priority and 0.36 s this way, and throughput rose by a tenth).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from eventkeep.ingest.compression import is_compressed
from eventkeep.ingest.pipeline import CheckedEvents, EventRequest, check_events

log = logging.getLogger("eventkeep.ingest")

# Below this many (uncompressed) bytes a body is checked inline: about 100 events.
INLINE_MAX_BYTES = 32 * 1024
# Event batches inflate six to twenty times under gzip: a compressed body counts as eight
# times its size (a bomb that goes inline still stops at the 10 MB limit).
_COMPRESSION_RATIO = 8
# How much lower than the server's the workers' priority is (see above).
WORKER_NICENESS = 5
_READY_TIMEOUT = 60.0


# In a worker process: the pool's barrier, passed at spawn (it cannot travel with a task).
_pool_started: Any = None


def _start_worker(pool_started: Any) -> None:
    global _pool_started
    _pool_started = pool_started
    # The server handles Ctrl-C and shuts the pool down; workers should not also react.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(WORKER_NICENESS)
    # The same collector tuning as the server: request data is acyclic.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _ready() -> bool:
    """Answers once every worker of the pool runs one of these: a worker waiting here takes
    no other task, so one fast worker cannot answer for a slow one."""
    _pool_started.wait(timeout=_READY_TIMEOUT)
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

    async def start(self, timeout: float = _READY_TIMEOUT) -> None:
        """Start the workers and wait until they answer, so that the first large bodies
        find them rather than being checked inline, one at a time, on the event loop."""
        if self.processes <= 0:
            return
        self._running_pool()
        with self._lock:
            warming = list(self._warming)
        if warming:
            done, _ = await asyncio.wait([asyncio.wrap_future(f) for f in warming], timeout=timeout)
            if len(done) < len(warming):
                log.warning("ingest workers not ready after %.0fs; checking inline until they are", timeout)

    @property
    def ready(self) -> bool:
        """Whether large bodies go to the workers now, rather than being checked inline."""
        return self.processes > 0 and self._running_pool() is not None

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
                    self.processes,
                    mp_context=context,
                    initializer=_start_worker,
                    initargs=(context.Barrier(self.processes),),
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
