"""Group commit: waiting requests share one commit, and every waiter hears the outcome."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from eventkeep.store.base import StoreUnavailable
from eventkeep.store.group_commit import GroupCommitter


def test_requests_waiting_during_a_commit_share_the_next_one() -> None:
    gate = threading.Event()
    commits: list[list[int]] = []

    def commit(items: list[int]) -> None:
        commits.append(items)
        if len(commits) == 1:
            gate.wait(timeout=10)

    writer: GroupCommitter[int] = GroupCommitter(commit)
    try:
        first = writer.submit(0, 1)
        while not commits:  # the writer is now inside the first commit, blocked on the gate
            threading.Event().wait(0.001)
        waiting = [writer.submit(i, 1) for i in range(1, 21)]
        gate.set()
        for future in [first, *waiting]:
            assert future.result(timeout=10) is None
    finally:
        writer.close()
    assert commits == [[0], list(range(1, 21))]


def test_a_failed_commit_fails_every_request_in_it() -> None:
    def commit(items: list[int]) -> None:
        raise OSError("disk full")

    writer: GroupCommitter[int] = GroupCommitter(commit)
    try:
        futures: list[Future[None]] = [writer.submit(i, 10) for i in range(3)]
        for future in futures:
            with pytest.raises(StoreUnavailable, match="disk full"):
                future.result(timeout=10)
    finally:
        writer.close()


def test_commits_are_capped_in_rows() -> None:
    gate = threading.Event()
    commits: list[list[int]] = []

    def commit(items: list[int]) -> None:
        commits.append(items)
        gate.wait(timeout=10)

    writer: GroupCommitter[int] = GroupCommitter(commit, max_rows_per_commit=100)
    try:
        futures = [writer.submit(0, 60)]
        while not commits:
            threading.Event().wait(0.001)
        futures += [writer.submit(i, 60) for i in range(1, 5)]
        gate.set()
        for future in futures:
            future.result(timeout=10)
    finally:
        writer.close()
    assert commits == [[0], [1], [2], [3], [4]]


def test_a_full_queue_refuses_instead_of_growing() -> None:
    gate = threading.Event()
    started = threading.Event()

    def commit(items: list[int]) -> None:
        started.set()
        gate.wait(timeout=10)

    writer: GroupCommitter[int] = GroupCommitter(commit, max_pending_rows=100)
    try:
        writer.submit(0, 50)
        assert started.wait(timeout=10)  # taken by the writer, which now blocks
        accepted = writer.submit(1, 60)
        with pytest.raises(StoreUnavailable):
            for i in range(2, 10):  # the queue holds at most 100 rows: one of these must be refused
                writer.submit(i, 60)
        gate.set()
        accepted.result(timeout=10)
    finally:
        gate.set()
        writer.close()


def test_close_refuses_new_work() -> None:
    writer: GroupCommitter[int] = GroupCommitter(lambda items: None)
    writer.close()
    with pytest.raises(StoreUnavailable):
        writer.submit(1, 1)


def _gathering(commits: list[list[int]], seconds: float = 3.0) -> GroupCommitter[int]:
    return GroupCommitter(commits.append, gather_rows=100, gather_seconds=seconds)


def test_a_gathering_writer_waits_for_enough_rows_then_commits_them_together() -> None:
    commits: list[list[int]] = []
    writer = _gathering(commits)
    try:
        first = writer.submit(1, 40, urgent=False)
        with pytest.raises(TimeoutError):
            first.result(timeout=0.3)  # 40 rows of 100: held back
        second = writer.submit(2, 40, urgent=False)
        with pytest.raises(TimeoutError):
            second.result(timeout=0.3)
        third = writer.submit(3, 30, urgent=False)  # 110 rows: enough
        for future in (first, second, third):
            future.result(timeout=2)
    finally:
        writer.close()
    assert commits == [[1, 2, 3]]


def test_a_gathering_writer_commits_what_it_has_at_the_deadline() -> None:
    commits: list[list[int]] = []
    writer = _gathering(commits, seconds=0.5)
    try:
        future = writer.submit(1, 10, urgent=False)
        with pytest.raises(TimeoutError):
            future.result(timeout=0.2)
        future.result(timeout=5)
    finally:
        writer.close()
    assert commits == [[1]]


def test_urgent_work_and_hurry_end_the_gathering_at_once() -> None:
    commits: list[list[int]] = []
    writer = _gathering(commits, seconds=30)
    try:
        held = writer.submit(1, 10, urgent=False)
        writer.submit(2, 1).result(timeout=2)  # someone waits for this one: no gathering
        assert held.done() and commits == [[1, 2]]
        held = writer.submit(3, 10, urgent=False)
        writer.hurry()  # a reader wants what is queued
        held.result(timeout=2)
        writer.hurry()  # ...or what is about to be: the next item is not held either
        writer.submit(4, 10, urgent=False).result(timeout=2)
        held = writer.submit(5, 10, urgent=False)  # the hurry is spent once the queue empties
        with pytest.raises(TimeoutError):
            held.result(timeout=0.3)
    finally:
        writer.close()  # closing commits what is held
    assert held.done() and commits == [[1, 2], [3], [4], [5]]


def test_hurry_does_not_count_as_an_idle_second() -> None:
    """A read's hurry wakes the writer; its idle work (which must not run beside an export
    that is starting) waits for a whole second without a word."""
    idle_runs: list[float] = []
    writer: GroupCommitter[int] = GroupCommitter(lambda items: None, idle=lambda: idle_runs.append(time.monotonic()))
    try:
        deadline = time.monotonic() + 1.0
        while not idle_runs and time.monotonic() < deadline + 2:
            time.sleep(0.01)
        assert idle_runs  # an idle second passed: idle work ran
        hurried = time.monotonic()
        for _ in range(10):
            writer.hurry()
            time.sleep(0.05)
        after = [t for t in idle_runs if t > hurried]
        assert not after or after[0] - hurried >= 0.9, "idle work ran as soon as a read hurried the writer"
    finally:
        writer.close()
