"""Group commit: concurrent appends share one transaction instead of queueing for their own.

Requests hand their batch to a single writer thread and wait. The writer takes everything
waiting, commits it as one transaction, and wakes every request in it: each learns whether
its events are durable. One fsync then serves many requests, and under load a commit holds
as many requests as arrived while the previous one ran.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from eventkeep.store.base import StoreUnavailable

log = logging.getLogger("eventkeep.store")

T = TypeVar("T")


@dataclass
class _Pending(Generic[T]):
    item: T
    rows: int
    future: Future[None]


class GroupCommitter(Generic[T]):
    def __init__(
        self,
        commit: Callable[[list[T]], None],
        *,
        max_rows_per_commit: int = 50_000,
        max_pending_rows: int = 400_000,
        idle: Callable[[], None] | None = None,
        name: str = "eventkeep-writer",
        gather_rows: int = 0,
        gather_seconds: float = 0.0,
    ) -> None:
        """With `gather_rows`, the writer holds a queue of fewer rows than that, none of
        them urgent, for up to `gather_seconds` while more arrive (see `hurry`)."""
        self._commit = commit
        self._idle = idle
        self._max_rows = max_rows_per_commit
        self._max_pending = max_pending_rows
        self._queue: deque[_Pending[T]] = deque()
        self._pending_rows = 0
        self._gather_rows = gather_rows
        self._gather_seconds = gather_seconds
        self._urgent = False  # until the queue is next empty: take it without gathering
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, rows: int, *, wait: bool = False, urgent: bool = True) -> Future[None]:
        """Queue an item. A full queue refuses it, or with `wait`, makes the caller wait.
        `urgent=False`: nobody is waiting for this commit, so the writer may gather."""
        future: Future[None] = Future()
        with self._cond:
            if self._closed:
                raise StoreUnavailable("the store is shutting down")
            while wait and self._pending_rows + rows > self._max_pending and self._queue and not self._closed:
                self._cond.wait()
            if self._pending_rows + rows > self._max_pending and self._queue:
                raise StoreUnavailable("the write queue is full")
            self._queue.append(_Pending(item, rows, future))
            self._pending_rows += rows
            self._urgent = self._urgent or urgent
            self._cond.notify_all()
        return future

    async def append(self, item: T, rows: int) -> None:
        await asyncio.wrap_future(self.submit(item, rows))

    def _take(self) -> list[_Pending[T]] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                woken = self._cond.wait(timeout=1.0)
                # Idle means a whole second without a word: not woken early by `hurry` (an
                # export starting, which idle work must not run beside) or a submitter.
                if not woken and not self._queue and not self._closed and self._idle is not None:
                    self._run_idle()
            self._gather()
            taken = [self._queue.popleft()]
            rows = taken[0].rows
            while self._queue and rows + self._queue[0].rows <= self._max_rows:
                pending = self._queue.popleft()
                rows += pending.rows
                taken.append(pending)
            self._pending_rows -= rows
            if not self._queue:
                self._urgent = False
            self._cond.notify_all()  # room for submitters that wait
            return taken

    def _gather(self) -> None:
        """Wait, lock held, for the queue to reach gather_rows, unless something is urgent.

        The wait counts from now, not from when the oldest item came: what queued while
        the last commit ran is usually short of gather_rows still, and would otherwise go
        at once, as a small transaction."""
        deadline = time.monotonic() + self._gather_seconds
        while self._pending_rows < self._gather_rows and not self._urgent and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(timeout=left)

    def hurry(self) -> None:
        """Commit what is queued now, or next, without gathering: someone waits to read it
        (its rows may be on their way to the queue still)."""
        with self._cond:
            self._urgent = True
            if self._queue:
                self._cond.notify_all()

    def _run_idle(self) -> None:
        """Maintenance (checkpoints) runs only when nobody waits; called with the lock held."""
        assert self._idle is not None
        self._cond.release()
        try:
            self._idle()
        except Exception:  # idle-time maintenance must never kill the writer
            log.exception("idle maintenance failed")
        finally:
            self._cond.acquire()

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            try:
                self._commit([p.item for p in taken])
            except BaseException as exc:  # every waiter must hear the outcome
                log.exception("commit of %d requests failed", len(taken))
                for pending in taken:
                    pending.future.set_exception(StoreUnavailable(str(exc)))
            else:
                for pending in taken:
                    pending.future.set_result(None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
