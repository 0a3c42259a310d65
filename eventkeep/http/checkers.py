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

A checked batch is about half a kilobyte per event. Through the pool's pipe it would be
pickled, pushed through 64 KB at a time and unpickled; instead a worker writes the rows as
one Arrow file in shared memory (/dev/shm) and the server reads and deletes it as soon as
the answer arrives, awaited or not (bench/RESULTS.md, session 5: 5 to 7 % more events/s).
Where there is no /dev/shm, or it is full, the rows take the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from eventkeep.collector import keep_freed_memory, tune_for_batches
from eventkeep.ingest.batch import read_rows, write_rows
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
# How often a worker checks that its server still runs (see _exit_with).
WATCH_INTERVAL = 1.0
# Batches of fewer rows come back through the pipe: a file would cost more than it saves.
SHARED_MIN_ROWS = 256
SHARED_MEMORY = Path("/dev/shm")
_SHARED_PREFIX = "eventkeep-"


# In a worker process: the pool's barrier, passed at spawn (it cannot travel with a task),
# and the directory in shared memory where checked rows are written (None: use the pipe).
_pool_started: Any = None
_shared_dir: Path | None = None
_shared_names = itertools.count()


def _start_worker(pool_started: Any, shared_dir: Path | None) -> None:
    global _pool_started, _shared_dir
    _pool_started = pool_started
    _shared_dir = shared_dir
    # The server handles Ctrl-C and shuts the pool down; workers should not also react.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(WORKER_NICENESS)
    tune_for_batches()
    keep_freed_memory()
    threading.Thread(target=_exit_with, args=(os.getppid(),), name="eventkeep-server-watch", daemon=True).start()


def _exit_with(server: int) -> None:
    """End this worker once its server is gone. A server killed outright (`kill -9`, the
    OOM killer) cannot shut its pool down, and the workers would otherwise wait for tasks
    forever, each holding its memory (and the pool's semaphores in /dev/shm)."""
    while os.getppid() == server:
        time.sleep(WATCH_INTERVAL)
    os._exit(0)


@dataclass(frozen=True, slots=True)
class _SharedRows:
    """A worker's answer whose rows wait in a file in shared memory."""

    checked: CheckedEvents  # its batch has no rows
    path: str


def _check_in_worker(request: EventRequest) -> CheckedEvents | _SharedRows:
    checked = check_events(request)
    if _shared_dir is None or len(checked.batch) < SHARED_MIN_ROWS:
        return checked
    path = str(_shared_dir / f"{os.getpid()}-{next(_shared_names)}.arrow")
    rows = checked.batch.rows
    try:
        with pa.OSFile(path, "wb") as sink:
            write_rows(rows, sink)
    except OSError:  # full (containers often give /dev/shm 64 MB), or gone: use the pipe
        _remove(path)
        return checked
    return _SharedRows(replace(checked, batch=replace(checked.batch, rows=rows.schema.empty_table())), path)


def _read_back(answer: CheckedEvents | _SharedRows) -> CheckedEvents:
    """The worker's answer with its rows read back, and their file deleted."""
    if not isinstance(answer, _SharedRows):
        return answer
    try:
        # Mapped, not read: the rows' buffers are the file's pages, with no copy. The
        # mapping outlives the file's name, which goes at once.
        rows = read_rows(pa.memory_map(answer.path))
    finally:
        _remove(answer.path)
    return replace(answer.checked, batch=replace(answer.checked.batch, rows=rows))


def _deliver(into: Future[CheckedEvents], checked: Future[Any]) -> None:
    """Runs in the pool's thread when a worker answers, whether or not a request still
    awaits the answer (its client may have gone), so that no file is left behind."""
    try:
        result = _read_back(checked.result())
    except BaseException as exc:
        with contextlib.suppress(InvalidStateError):  # the request was cancelled
            into.set_exception(exc)
        return
    with contextlib.suppress(InvalidStateError):
        into.set_result(result)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _make_shared_dir() -> Path | None:
    """A directory in shared memory for this server's workers, after removing those left
    by servers that are no longer running (killed before they could clean up)."""
    if not SHARED_MEMORY.is_dir():
        return None
    for stale in SHARED_MEMORY.glob(f"{_SHARED_PREFIX}*-*"):
        owner = stale.name[len(_SHARED_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _running(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        return Path(tempfile.mkdtemp(prefix=f"{_SHARED_PREFIX}{os.getpid()}-", dir=SHARED_MEMORY))
    except OSError:
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


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
        self._shared_dir: Path | None = None

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
        received: Future[CheckedEvents] = Future()
        try:
            pool.submit(_check_in_worker, request).add_done_callback(lambda done: _deliver(received, done))
            return await asyncio.wrap_future(received)
        except BrokenProcessPool:
            log.warning("an ingest worker process died; checking this request inline and restarting the pool")
            self._discard(pool)
            return check_events(request)
        except OSError as exc:  # the rows' file could not be read back
            log.warning("reading an ingest worker's rows failed (%s); checking this request inline", exc)
            return check_events(request)

    def _running_pool(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._closed:
                return None
            if self._pool is None:
                # Spawned, not forked: the server has threads and open database handles.
                context = multiprocessing.get_context("spawn")
                if self._shared_dir is None:
                    self._shared_dir = _make_shared_dir()
                self._pool = ProcessPoolExecutor(
                    self.processes,
                    mp_context=context,
                    initializer=_start_worker,
                    initargs=(context.Barrier(self.processes), self._shared_dir),
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
        if self._shared_dir is not None:
            shutil.rmtree(self._shared_dir, ignore_errors=True)
            self._shared_dir = None
