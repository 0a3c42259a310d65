"""Sending batches to /import: gzip, concurrency, retries with backoff, per-record refusals.

Behaviour follows Mixpanel's advice for /import (spec §2.4, §2.5): batches of at most 2000
events and under the byte limit, gzip, 10–20 concurrent requests; on 429, 5xx and network
errors, exponential backoff from 2 s doubling to 60 s with 1–5 s of jitter, or exactly what a
`Retry-After` header asks (a 429 pauses every worker, since the limit is the project's);
400s are never retried, as they would fail again and count against the rate limit.

Every batch ends in exactly one outcome: imported (with per-record refusals, which go to
the rejects file), or failed after the last attempt. Nothing is dropped silently: a failed
batch stops the checkpoint's watermark and the run's exit status says so.
"""

from __future__ import annotations

import email.utils
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from isal import igzip

from eventkeep import __version__
from eventkeep.client.checkpoint import Counts, Position
from eventkeep.client.connection import Connection
from eventkeep.client.transport import PostFailed, Reply, poster_for

USER_AGENT = f"eventkeep-import/{__version__}"
FATAL_STATUSES = (401, 403, 404, 405)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; `Retry-After` wins when the server sends it."""

    max_attempts: int = 10
    backoff_base: float = 2.0
    backoff_max: float = 60.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay after failed attempt `attempt` (1-based): base·2^(n-1) capped, plus jitter.

        The jitter is 0.5–2.5 × base, which with the default 2 s base is Mixpanel's "1–5 s",
        and shrinks with the base so tests can run on milliseconds.
        """
        step = min(self.backoff_base * (2 ** (attempt - 1)), self.backoff_max)
        return step + self.backoff_base * rng.uniform(0.5, 2.5)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Batch:
    """Events to send in one request, and the stretch of input they close.

    `counts` holds what happened locally to the records of that stretch (read, refused by
    validation, ignored); the sender's outcome adds the server's side.
    """

    seq: int
    lines: Sequence[bytes]
    positions: Sequence[Position]
    end: Position
    counts: Counts = field(default_factory=Counts)
    # The lines joined by newlines, when the reader had them so already: the body as sent.
    text: bytes | None = None

    @property
    def nbytes(self) -> int:
        if self.text is not None:
            return len(self.text) + 1
        return sum(len(line) for line in self.lines) + len(self.lines)


@dataclass
class Refusal:
    index: int  # in the batch
    field: str
    message: str
    insert_id: str | None


@dataclass
class Outcome:
    imported: int = 0
    refusals: list[Refusal] = field(default_factory=list)
    error: str | None = None  # set when the batch failed for good (not delivered)
    attempts: int = 0
    mismatch: str | None = None  # the server's count disagreed with what was sent

    @property
    def failed(self) -> bool:
        return self.error is not None


class Stats:
    """Request-level counters shared by the workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.retry_reasons: Counter[str] = Counter()
        self.bytes_sent = 0
        self.mismatches: list[str] = []

    def request(self, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_sent += nbytes

    def retry(self, reason: str) -> None:
        with self._lock:
            self.retries += 1
            self.retry_reasons[reason] += 1

    def mismatch(self, text: str) -> None:
        with self._lock:
            if len(self.mismatches) < 20:
                self.mismatches.append(text)


class Sender:
    """A pool of threads posting batches; `on_done(batch, outcome)` runs in the worker."""

    def __init__(
        self,
        connection: Connection,
        *,
        on_done: Callable[[Batch, Outcome], None],
        policy: RetryPolicy | None = None,
        concurrency: int = 10,
        timeout: float = 120.0,
        strict: bool = True,
        transport: Any = None,
        seed: int | None = None,
    ) -> None:
        self.connection = connection
        self.policy = policy or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self.stats = Stats()
        self.fatal: str | None = None
        self._on_done = on_done
        headers = {
            "Authorization": connection.auth_header("import"),
            "Content-Type": "application/x-ndjson",
            "Content-Encoding": "gzip",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._poster = poster_for(
            connection.import_url.rstrip("/") + "/import",
            {"strict": "1" if strict else "0", **connection.params()},
            headers,
            timeout=timeout,
            connect_timeout=min(timeout, 15.0),
            connections=self.concurrency,
            transport=transport,
        )
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=self.concurrency)
        self._stop = threading.Event()
        self._pause_lock = threading.Lock()
        self._resume_at = 0.0
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"eventkeep-send-{i}", daemon=True) for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    # -- the producer's side ------------------------------------------------------------

    def submit(self, batch: Batch) -> None:
        """Queue a batch, waiting while `concurrency` batches are already waiting."""
        self._queue.put(batch)

    def abort(self, reason: str) -> None:
        """Stop sending: batches not yet delivered end as failed (resumable), with `reason`."""
        if self.fatal is None:
            self.fatal = reason
        self._stop.set()

    @property
    def aborted(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Wait until every queued batch has an outcome."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._poster.close()

    # -- the workers ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._stop.is_set():
                outcome = Outcome(error=f"not sent: {self.fatal or 'stopped'}")
            else:
                try:
                    outcome = self._deliver(batch.lines, batch.text)
                except Exception as exc:  # never lose a batch to a bug: it fails, resumably
                    outcome = Outcome(error=f"unexpected {type(exc).__name__}: {exc}")
            try:
                self._on_done(batch, outcome)
            except Exception as exc:
                self.abort(f"internal error recording batch {batch.seq}: {exc!r}")

    def _jitter(self, attempt: int) -> float:
        with self._rng_lock:
            return self.policy.backoff(attempt, self._rng)

    def _wait_for_pause(self) -> None:
        while not self._stop.is_set():
            with self._pause_lock:
                wait = self._resume_at - time.monotonic()
            if wait <= 0:
                return
            self._stop.wait(wait)

    def _pause_all(self, seconds: float) -> None:
        with self._pause_lock:
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def _deliver(self, lines: Sequence[bytes], text: bytes | None = None) -> Outcome:
        if not lines:
            return Outcome()
        raw = b"\n".join(lines) if text is None else text
        body = igzip.compress(raw, compresslevel=1)
        attempt = 0
        while True:
            attempt += 1
            self._wait_for_pause()
            if self._stop.is_set():
                return Outcome(error=f"not sent: {self.fatal or 'stopped'}", attempts=attempt - 1)
            retry_after: float | None = None
            status = 0
            self.stats.request(len(body))
            try:
                response = self._poster.post(body)
            except PostFailed as exc:
                reason = f"network: {exc.kind}"
                last = f"{reason} ({exc})" if str(exc) else reason
            else:
                status = response.status
                if status == 200:
                    return self._accepted(response, len(lines), attempt)
                if status == 413 and len(lines) > 1:
                    return self._split(lines, attempt)
                if status in FATAL_STATUSES:
                    message = f"the server refused the request: HTTP {status} {_error_text(response)}"
                    self.abort(message)
                    return Outcome(error=message, attempts=attempt)
                if status == 429 or status == 408 or status >= 500:
                    reason = str(status)
                    last = f"HTTP {status} {_error_text(response)}"
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                else:
                    return self._refused(response, len(lines), attempt)
            if attempt >= self.policy.max_attempts:
                return Outcome(error=f"gave up after {attempt} attempts; last: {last}", attempts=attempt)
            if retry_after is not None:
                delay = retry_after + self.policy.backoff_base * 0.1 * self._rng.random()
            else:
                delay = self._jitter(attempt)
            if status == 429:
                self._pause_all(delay)
            self.stats.retry(reason)
            self._stop.wait(delay)

    def _split(self, lines: Sequence[bytes], attempt: int) -> Outcome:
        """413: the server's limit is lower than ours (Mixpanel's was 2 MB); halve and resend."""
        half = len(lines) // 2
        first = self._deliver(lines[:half])
        second = self._deliver(lines[half:])
        refusals = first.refusals + [Refusal(r.index + half, r.field, r.message, r.insert_id) for r in second.refusals]
        error = first.error or second.error
        return Outcome(first.imported + second.imported, refusals, error, attempt + first.attempts + second.attempts)

    def _accepted(self, response: Reply, sent: int, attempt: int) -> Outcome:
        data = _json_body(response)
        if not isinstance(data, dict):
            # A legacy `1` answer: everything went in (the status says so; there is no count).
            return Outcome(sent, attempts=attempt)
        refusals = _refusals(data.get("failed_records"), sent)
        if isinstance(refusals, str):
            return Outcome(0, [Refusal(i, "event", refusals, None) for i in range(sent)], attempts=attempt)
        imported = data.get("num_records_imported")
        outcome = Outcome(sent - len(refusals), refusals, attempts=attempt)
        if isinstance(imported, int) and not isinstance(imported, bool):
            outcome.imported = imported
            if imported != sent - len(refusals):
                outcome.mismatch = f"the server counted {imported} imported of {sent} sent ({len(refusals)} refused)"
        return outcome

    def _refused(self, response: Reply, sent: int, attempt: int) -> Outcome:
        """A 4xx that is not about credentials: per-record refusals, or the whole batch's."""
        data = _json_body(response)
        if isinstance(data, dict):
            refusals = _refusals(data.get("failed_records"), sent)
            if isinstance(refusals, list) and refusals:
                imported = data.get("num_records_imported")
                count = imported if isinstance(imported, int) and not isinstance(imported, bool) else sent - len(refusals)
                outcome = Outcome(count, refusals, attempts=attempt)
                if count != sent - len(refusals):
                    outcome.mismatch = f"the server counted {count} imported of {sent} sent ({len(refusals)} refused)"
                return outcome
            if isinstance(refusals, str):
                message = refusals
            else:
                message = f"HTTP {response.status}: {_error_text(response)}"
        else:
            message = f"HTTP {response.status}: {_error_text(response)}"
        return Outcome(0, [Refusal(i, "request", message, None) for i in range(sent)], attempts=attempt)


def _json_body(response: Reply) -> Any:
    try:
        return msgspec.json.decode(response.content)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


def _error_text(response: Reply) -> str:
    data = _json_body(response)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    text = response.content.decode("utf-8", "replace").strip()
    return text[:200] if text else response.reason


def _refusals(entries: Any, sent: int) -> list[Refusal] | str:
    """`failed_records` as refusals; a string entry (a whole-batch refusal) as that string."""
    if not isinstance(entries, list):
        return []
    refusals: list[Refusal] = []
    for entry in entries:
        if isinstance(entry, str):
            return entry
        if not isinstance(entry, dict):
            continue
        index = entry.get("index")
        if not isinstance(index, int) or not 0 <= index < sent:
            continue
        insert_id = entry.get("insert_id", entry.get("$insert_id"))
        refusals.append(
            Refusal(
                index,
                str(entry.get("field", "event")),
                str(entry.get("message", "refused by the server")),
                insert_id if isinstance(insert_id, str) else None,
            )
        )
    return refusals


class DryRunSender:
    """Stands in for Sender under --dry-run: validates only, every batch "would import"."""

    def __init__(self, on_done: Callable[[Batch, Outcome], None]) -> None:
        self._on_done = on_done
        self.stats = Stats()
        self.fatal: str | None = None

    def submit(self, batch: Batch) -> None:
        self._on_done(batch, Outcome(len(batch.lines)))

    def abort(self, reason: str) -> None:
        self.fatal = self.fatal or reason

    @property
    def aborted(self) -> bool:
        return self.fatal is not None

    def close(self) -> None:
        pass
