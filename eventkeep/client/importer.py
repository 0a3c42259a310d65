"""The import pipeline: read → shape → validate → batch → send, resumable.

The main thread reads, decodes and validates (with the server's own `validate_events`, so
both refuse the same events in the same words) and cuts batches; a pool of sender threads
compresses and posts them. The queue between them is bounded, so memory does not grow with
the input: at most about 2 × concurrency batches exist at any time.

Every record belongs to exactly one batch's stretch of input, refused and ignored ones
included, so the checkpoint's watermark (see `checkpoint`) can move over them too.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, TextIO, overload

import msgspec

from eventkeep.client.checkpoint import (
    CheckpointFile,
    CheckpointMismatch,
    Counts,
    Position,
    Watermark,
    default_path,
)
from eventkeep.client.connection import Connection
from eventkeep.client.progress import Mode, Progress, Snapshot, human_duration, retries_line
from eventkeep.client.rejects import RejectsWriter, reason_key
from eventkeep.client.sender import Batch, DryRunSender, Outcome, RetryPolicy, Sender
from eventkeep.client.shape import Shaped, ShapeOptions, Shaper, chunks_from_events, encode_event
from eventkeep.client.sources import ByteCounter, Chunk, InputError, Source, read_source
from eventkeep.collector import fewer_collections
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.fastpath import accepts_every_event, clean_lines
from eventkeep.ingest.limits import MAX_EVENTS_PER_REQUEST, MAX_REQUEST_BYTES
from eventkeep.ingest.payload import CheckedEvent
from eventkeep.ingest.validate import IngestContext, compact_size_bound, validate_events

EXIT_OK = 0
EXIT_REJECTED = 1  # everything was delivered, but some events were refused (see the rejects)
EXIT_USAGE = 2  # bad arguments, unreadable input, a checkpoint of another job
EXIT_FAILED = 3  # some events were not delivered; run the same command again to resume
EXIT_INTERRUPTED = 130

# Under the 10 MB request limit with room to spare, as mixpanel-import does (9.8 MB).
DEFAULT_BATCH_BYTES = 9_800_000
MAX_RAW_IN_REJECTS = 65536


@dataclass
class ImportOptions:
    """Everything about an import except where it goes (that is the Connection)."""

    format: str = "auto"
    shape: ShapeOptions = field(default_factory=ShapeOptions)
    csv_delimiter: str | None = None
    batch_size: int = MAX_EVENTS_PER_REQUEST
    batch_bytes: int = DEFAULT_BATCH_BYTES
    concurrency: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 120.0
    rejects: str | None = None
    checkpoint: str | None = None  # None: an automatic one in the user's cache
    use_checkpoint: bool = True
    restart: bool = False
    dry_run: bool = False
    progress: Mode = "none"
    progress_interval: float = 10.0
    strict: bool = True
    seed: int | None = None

    def check(self) -> None:
        if not 1 <= self.batch_size <= MAX_EVENTS_PER_REQUEST:
            raise ValueError(f"--batch-size must be between 1 and {MAX_EVENTS_PER_REQUEST}")
        if not 1024 <= self.batch_bytes <= MAX_REQUEST_BYTES:
            raise ValueError(f"--batch-bytes must be between 1024 and {MAX_REQUEST_BYTES}")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.retry.max_attempts < 1:
            raise ValueError("--max-attempts must be at least 1")
        if self.retry.backoff_base < 0 or self.retry.backoff_max < 0:
            raise ValueError("backoff times cannot be negative")


@dataclass
class ImportSummary:
    """What happened, for the job as a whole (earlier resumed runs included) and this run."""

    total: Counts
    run: Counts
    elapsed: float
    requests: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    failed_batches: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    rejects_file: str | None = None
    reject_examples: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    resumed_from: str | None = None
    already_complete: bool = False
    dry_run: bool = False
    interrupted: bool = False
    input_error: str | None = None
    stopped_early: bool = False  # the input was not read to its end (an abort)

    @property
    def delivered_all(self) -> bool:
        return not (
            self.failed_batches or self.total.failed or self.interrupted or self.input_error or self.stopped_early
        )

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.input_error:
            return EXIT_USAGE
        if not self.delivered_all:
            return EXIT_FAILED
        if self.total.rejected_total:
            return EXIT_REJECTED
        return EXIT_OK

    @property
    def rate(self) -> float:
        done = self.run.read if self.dry_run else self.run.sent
        return done / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.total.read,
            "sent": self.total.sent,
            "imported": self.total.imported,
            "rejected": self.total.rejected_total,
            "rejected_by_reason": dict(self.total.rejected),
            "ignored": self.total.ignored,
            "failed": self.total.failed,
            "failed_batches": self.failed_batches,
            "retries": self.retries,
            "retry_reasons": dict(self.retry_reasons),
            "requests": self.requests,
            "elapsed_s": round(self.elapsed, 3),
            "events_per_s": round(self.rate, 1),
            "this_run": self.run.to_json(),
            "errors": self.errors,
            "mismatches": self.mismatches,
            "rejects_file": self.rejects_file,
            "checkpoint": self.checkpoint,
            "resumed_from": self.resumed_from,
            "already_complete": self.already_complete,
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "input_error": self.input_error,
            "stopped_early": self.stopped_early,
            "exit_status": self.exit_status,
        }

    def render(self) -> str:
        t = self.total
        if self.already_complete:
            return (
                f"eventkeep import: nothing to do; the checkpoint {self.checkpoint} says this job is complete "
                f"({t.imported:,} imported, {t.rejected_total:,} rejected). Use --restart to import again.\n"
            )
        verb = "validated (dry run)" if self.dry_run else "done"
        if not self.delivered_all:
            verb = "interrupted" if self.interrupted else "INCOMPLETE"
        lines = [
            f"eventkeep import: {verb} in {human_duration(self.elapsed)}: {t.read:,} events read, "
            + (f"{t.read - t.rejected_total - t.ignored:,} valid" if self.dry_run else f"{t.sent:,} sent, {t.imported:,} imported")
            + f" ({self.rate:,.0f} events/s)"
        ]
        if self.resumed_from:
            lines.append(f"  resumed from {self.resumed_from}; totals include the earlier runs")
        if t.rejected_total:
            lines.append(f"  rejected: {t.rejected_total:,}")
            for reason, n in sorted(t.rejected.items(), key=lambda kv: -kv[1])[:10]:
                lines.append(f"    {n:>9,}  {reason}")
            if len(t.rejected) > 10:
                lines.append(f"    … and {len(t.rejected) - 10} more reasons")
            if self.rejects_file:
                lines.append(f"  rejected events are in {self.rejects_file}")
            else:
                lines.append("  (give --rejects FILE to keep the rejected events) e.g.")
                lines.extend(f"    {example}" for example in self.reject_examples)
        if t.ignored:
            lines.append(f"  ignored ($ignore set, dropped as the server would): {t.ignored:,}")
        if not self.dry_run:
            lines.append(retries_line(self.retries, self.retry_reasons, self.requests))
        if t.failed or self.failed_batches:
            lines.append(f"  NOT delivered: {t.failed:,} events in {self.failed_batches:,} batches")
        if self.stopped_early:
            lines.append("  stopped before the end of the input: the rest was not read")
        for error in self.errors[:5]:
            lines.append(f"  error: {error}")
        for text in self.mismatches[:3]:
            lines.append(f"  warning: {text}")
        if self.input_error:
            lines.append(f"  input error: {self.input_error}")
        if not self.delivered_all and self.checkpoint:
            lines.append(f"  progress is saved in {self.checkpoint}; run the same command again to resume")
        elif not self.delivered_all and not self.dry_run:
            lines.append("  run the same command again: $insert_id deduplication absorbs what was already sent")
        return "\n".join(lines) + "\n"


class Importer:
    """One import job. `run()` once; it returns the summary and never raises for bad events."""

    def __init__(
        self,
        connection: Connection | None,
        sources: list[Source],
        options: ImportOptions,
        *,
        events: Iterable[Any] | None = None,
        transport: Any = None,
        progress_stream: TextIO | None = None,
    ) -> None:
        options.check()
        if connection is None and not options.dry_run:
            raise ValueError("a connection is needed unless dry_run is set")
        self.connection = connection
        self.sources = sources
        self.options = options
        self.events = events
        self.transport = transport
        self.progress_stream = progress_stream
        self.shaper = Shaper(options.shape)
        self.counter = ByteCounter()
        self.labels = [s.label for s in sources] if events is None else ["<events>"]
        self.rejects = RejectsWriter(options.rejects, self.labels)
        self._lock = threading.Lock()
        self._run = Counts()
        self._live_read = 0
        self._live_imported = 0
        self._live_rejected = 0
        self._failed_batches = 0
        self._errors: list[str] = []
        self._mismatches: list[str] = []
        self._prior_retries = 0
        self.checkpoint: CheckpointFile | None = None
        self._automatic_checkpoint = False

    # -- job identity -----------------------------------------------------------------

    def job(self) -> dict[str, Any]:
        """What the checkpoint is tied to: inputs, how they are read, and the destination."""
        destination = "dry-run" if self.connection is None else self.connection.identity("import")
        return {
            "kind": "import",
            "destination": destination,
            "sources": [s.identity() for s in self.sources],
            "format": self.options.format,
            "csv_delimiter": self.options.csv_delimiter,
            "shape": self.options.shape.fingerprint(),
            "strict": self.options.strict,
        }

    def _open_checkpoint(self) -> CheckpointFile | None:
        o = self.options
        if o.dry_run or not o.use_checkpoint or self.events is not None:
            return None
        if any(s.is_stdin for s in self.sources):
            if o.checkpoint is not None:
                # Nothing could tell a resumed run that the piped data is the same as before.
                raise ValueError("--checkpoint cannot be used with standard input (-): its content cannot be "
                                 "checked on resume; import from files to resume")
            return None  # standard input cannot be read again: no automatic resume
        job = self.job()
        if o.checkpoint is None:
            self._automatic_checkpoint = True
            return CheckpointFile(default_path("import", job), job)
        return CheckpointFile(Path(o.checkpoint), job)

    # -- running ------------------------------------------------------------------------

    def run(self) -> ImportSummary:
        started = time.monotonic()
        self.checkpoint = self._open_checkpoint()
        resume = None
        if self.checkpoint is not None:
            if self.options.restart:
                self.checkpoint.delete()
            try:
                resume = self.checkpoint.load()
            except CheckpointMismatch:
                if not self._automatic_checkpoint:
                    raise
                self.checkpoint.delete()
            if resume is not None and resume.complete:
                return ImportSummary(
                    resume.counts, Counts(), 0.0, checkpoint=str(self.checkpoint.path), already_complete=True
                )
        start: Position = resume.position if resume else (0, 0)
        prior = resume.counts if resume else Counts()
        self._prior_retries = resume.retries if resume else 0
        self.rejects.open(start if resume else None)
        self.watermark = Watermark(start, Counts.from_json(prior.to_json()), self._advanced)
        if self.options.dry_run:
            self.sender: Sender | DryRunSender = DryRunSender(self._done)
        else:
            assert self.connection is not None
            self.sender = Sender(
                self.connection,
                on_done=self._done,
                policy=self.options.retry,
                concurrency=self.options.concurrency,
                timeout=self.options.timeout,
                strict=self.options.strict,
                transport=self.transport,
                seed=self.options.seed,
            )
        self._total_bytes: int | None = None
        if self.events is None and not any(s.is_stdin for s in self.sources):
            self._total_bytes = sum(s.size() or 0 for s in self.sources[start[0]:])
        progress = Progress(
            self._snapshot,
            mode=self.options.progress,
            interval=self.options.progress_interval,
            stream=self.progress_stream,
            label="dry run" if self.options.dry_run else "import",
        )
        progress.start()
        interrupted = False
        input_error: str | None = None
        finished_reading = False
        try:
            with fewer_collections():
                finished_reading = self._produce(start)
        except KeyboardInterrupt:
            interrupted = True
            self.sender.abort("interrupted")
        except InputError as exc:
            input_error = str(exc)
            self.sender.abort(f"input error: {exc}")
        finally:
            try:
                self.sender.close()
            finally:
                progress.stop()
        complete = (
            finished_reading and not interrupted and input_error is None and not self.sender.aborted
            and not self.watermark.blocked and self._failed_batches == 0
        )
        if self.checkpoint is not None:
            if complete and self._automatic_checkpoint:
                self.checkpoint.delete()
            else:
                self.checkpoint.save(
                    self.watermark.position,
                    self.watermark.committed,
                    self._retries(),
                    complete=complete,
                    force=True,
                    before=self.rejects.flush,
                )
        self.rejects.close()
        total = Counts.from_json(prior.to_json())
        total.add(self._run)
        stats = self.sender.stats
        errors = list(self._errors)
        if self.sender.fatal and self.sender.fatal not in errors and not interrupted:
            errors.insert(0, self.sender.fatal)
        resumed = None
        if resume is not None:
            label = self.labels[start[0]] if start[0] < len(self.labels) else "the end of the inputs"
            resumed = f"checkpoint {self.checkpoint.path if self.checkpoint else ''} at {label} record {start[1]}"
        return ImportSummary(
            total=total,
            run=self._run,
            elapsed=time.monotonic() - started,
            requests=stats.requests,
            retries=stats.retries,
            retry_reasons=dict(stats.retry_reasons),
            failed_batches=self._failed_batches,
            errors=errors,
            mismatches=self._mismatches + stats.mismatches,
            rejects_file=str(self.rejects.path) if self.rejects.path else None,
            reject_examples=list(self.rejects.examples),
            checkpoint=str(self.checkpoint.path) if self.checkpoint is not None and not (complete and self._automatic_checkpoint) else None,
            resumed_from=resumed,
            dry_run=self.options.dry_run,
            interrupted=interrupted,
            input_error=input_error,
            stopped_early=not finished_reading,
        )

    def _retries(self) -> int:
        return self._prior_retries + self.sender.stats.retries

    def _advanced(self, position: Position, committed: Counts) -> None:
        if self.checkpoint is not None:
            self.checkpoint.save(position, committed, self._retries(), before=self.rejects.flush)

    def _snapshot(self) -> Snapshot:
        return Snapshot(
            self.counter.value, self._total_bytes, self._live_read, self._live_imported, self._live_rejected,
            self.sender.stats.retries,
        )

    def _chunks(self, start: Position) -> Iterable[Chunk]:
        if self.events is not None:
            yield from chunks_from_events(self.events)
            return
        for index in range(start[0], len(self.sources)):
            skip = start[1] if index == start[0] else 0
            yield from read_source(
                self.sources[index],
                index,
                fmt=self.options.format,
                skip=skip,
                counter=self.counter,
                csv_delimiter=self.options.csv_delimiter,
            )

    def _produce(self, start: Position) -> bool:
        """Read every chunk and submit batches; False if it stopped early (an abort)."""
        cutter = _BatchCutter(self.options, start, self._submit)
        end = start
        for chunk in self._chunks(start):
            if self.sender.aborted:
                self._unsent(cutter.lines, cutter.counts)
                return False
            source = chunk.source
            ctx = IngestContext("import", int(time.time() * 1000))
            text = chunk.text
            if (
                text is not None
                and chunk.records == chunk.lines
                and self.shaper.sends_as_read(chunk)
                and cutter.takes_whole(chunk.lines, len(text))
                and clean_lines(text, ctx) == chunk.lines
            ):
                # The usual chunk: NDJSON lines of Mixpanel-shaped events, every one clean,
                # none blank, a batch of its own, its text the request's body as read.
                cutter.add_text(chunk)
            elif not len(chunk) and not chunk.errors:
                pass  # blank lines only (or none: the input's end): nothing to check or send
            elif text is None and self.shaper.sends_as_read(chunk) and accepts_every_event(chunk.raws or [], ctx):
                # The same for other records (a JSON array's elements): sent as read.
                cutter.add_all(list(chunk.raws or []), source, chunk.indexes)
            else:
                self._live_rejected += self._check_and_add(cutter, chunk, ctx)
            self._live_read += len(chunk)
            end = (source, chunk.end)
            if cutter.full:
                cutter.flush(end)
        if self.sender.aborted:
            self._unsent(cutter.lines, cutter.counts)
            return False
        cutter.flush(end)
        return True

    def _check_and_add(self, cutter: _BatchCutter, chunk: Chunk, ctx: IngestContext) -> int:
        """Shape and validate a chunk in Python, then add what is accepted; the number refused."""
        shaped = self.shaper.shape(chunk)
        items = shaped.items
        texts = [line for line in shaped.lines if line is not None]
        checked = validate_events(
            items, ctx, shaped.parse_errors or None,
            decisions_only=True,
            size_bound=compact_size_bound(texts) if len(texts) == len(items) else None,
        )
        if len(checked.indexes) == len(items) and len(texts) == len(items):
            # Every record accepted and sent as read.
            cutter.add_all(texts, chunk.source, chunk.indexes)
            return 0
        return self._add_each(cutter, chunk, shaped, checked)

    def _add_each(self, cutter: _BatchCutter, chunk: Chunk, shaped: Shaped, checked: ValidBatch) -> int:
        """A chunk with refused, ignored or re-encoded records, record by record; the
        number refused."""
        accepted = bytearray(len(shaped.items))
        for row in checked.indexes:
            accepted[row] = 1
        refused = {e.index: e for e in checked.errors}
        source = chunk.source
        rejected = 0
        for i, item in enumerate(shaped.items):
            record = chunk.indexes[i]
            if accepted[i]:
                cutter.add(shaped.lines[i] or encode_event(item), (source, record))
                continue
            cutter.counts.read += 1
            if i in refused:
                error = refused[i]
                raw = chunk.raws[i][:MAX_RAW_IN_REJECTS] if chunk.raws is not None else None
                event = None if i in shaped.parse_errors else item
                if type(event) is CheckedEvent:
                    event = {"event": event.event, "properties": event.properties}
                self.rejects.write((source, record), error.field, error.message, error.insert_id, event, raw)
                cutter.counts.reject(reason_key(error.field, error.message))
                rejected += 1
            else:
                cutter.counts.ignored += 1
        return rejected

    def _submit(self, batch: Batch) -> None:
        self.watermark.register(batch.seq, batch.end)
        self.sender.submit(batch)

    def _unsent(self, lines: list[bytes], counts: Counts) -> None:
        counts.failed += len(lines)
        with self._lock:
            self._run.add(counts)

    def _done(self, batch: Batch, outcome: Outcome) -> None:
        """A batch's outcome (in a sender thread): refusals out, counts in, watermark on."""
        counts = batch.counts
        if outcome.failed:
            counts.failed += len(batch.lines)
            with self._lock:
                self._failed_batches += 1
                error = outcome.error or ""
                if len(self._errors) < 10 and not error.startswith("not sent"):
                    self._errors.append(f"batch {batch.seq}: {error}")
            if not self.sender.aborted:
                # The watermark cannot pass this batch; sending more would only be re-sent.
                self.sender.abort(f"batch {batch.seq} could not be delivered: {outcome.error}")
            self.watermark.finish(batch.seq, False, counts)
        else:
            for refusal in outcome.refusals:
                line = batch.lines[refusal.index]
                try:
                    event = msgspec.json.decode(line)
                except (msgspec.DecodeError, UnicodeDecodeError):
                    event = None
                self.rejects.write(
                    batch.positions[refusal.index], refusal.field, refusal.message, refusal.insert_id,
                    event, None if event is not None else line, stage="server",
                )
                counts.reject(reason_key(refusal.field, refusal.message))
            counts.sent += len(batch.lines)
            counts.imported += outcome.imported
            if outcome.mismatch:
                with self._lock:
                    self._mismatches.append(f"batch {batch.seq}: {outcome.mismatch}")
            self._live_imported += outcome.imported
            self._live_rejected += len(outcome.refusals)
            self.watermark.finish(batch.seq, True, counts)
        with self._lock:
            self._run.add(counts)


class _BatchCutter:
    """Cuts the accepted records into batches of at most `batch_size` records and
    `batch_bytes` bytes, in input order. `counts` are those of the batch being filled:
    a refused or ignored record counts in the batch whose stretch of input holds it."""

    def __init__(self, options: ImportOptions, start: Position, submit: Callable[[Batch], None]) -> None:
        self.batch_size = options.batch_size
        self.batch_bytes = options.batch_bytes
        self.submit = submit
        self.seq = 0
        self.lines: list[bytes] = []
        self.positions: list[Position] = []
        self.counts = Counts()
        self.nbytes = 0
        self.last_end = start

    @property
    def full(self) -> bool:
        return len(self.lines) >= self.batch_size

    def flush(self, upto: Position) -> None:
        """Send the batch being filled, as closing the input up to `upto` (exclusive)."""
        if not self.lines and not self.counts.read and upto == self.last_end:
            return
        batch = Batch(self.seq, self.lines, self.positions, upto, self.counts)
        self.seq += 1
        self.lines, self.positions, self.counts, self.nbytes, self.last_end = [], [], Counts(), 0, upto
        self.submit(batch)

    def add(self, line: bytes, position: Position) -> None:
        if self.lines and (len(self.lines) >= self.batch_size or self.nbytes + len(line) + 1 > self.batch_bytes):
            self.flush(position)  # the batch ends before this record...
        self.counts.read += 1  # ...so the record counts in the next one
        self.lines.append(line)
        self.positions.append(position)
        self.nbytes += len(line) + 1

    def takes_whole(self, count: int, nbytes: int) -> bool:
        """Whether `count` lines of `nbytes` (joined) fit in one batch of their own."""
        return 0 < count <= self.batch_size and nbytes + 1 <= self.batch_bytes

    def add_text(self, chunk: Chunk) -> None:
        """A text chunk with no blank line that makes a batch of its own (see `takes_whole`):
        the batch being filled goes first, then this one, with no per-line work."""
        source, records = chunk.source, chunk.indexes
        if self.lines:
            self.flush((source, records[0]))
        batch = Batch(self.seq, _Lines(chunk), _Positions(source, records), (source, chunk.end), self.counts, chunk.text)
        batch.counts.read += chunk.lines
        self.seq += 1
        self.counts, self.last_end = Counts(), batch.end
        self.submit(batch)

    def add_all(self, lines: list[bytes], source: int, records: Sequence[int]) -> None:
        """What `add` does for each line, a slice at a time: per-record Python work here
        cost ~2 µs an event, a fifth of the tool's time."""
        taken = 0
        while taken < len(lines):
            room = min(len(lines), taken + self.batch_size - len(self.lines))
            # fill[k]: the batch's bytes with k more lines (each line and its newline)
            fill = list(accumulate(map((1).__add__, map(len, lines[taken:room])), initial=self.nbytes))
            fits = bisect_right(fill, self.batch_bytes) - 1
            if fits <= 0:
                if self.lines:
                    self.flush((source, records[taken]))
                    continue
                fits = 1  # a record over batch_bytes on its own still goes, alone
            self.lines += lines[taken : taken + fits]
            self.positions += [(source, record) for record in records[taken : taken + fits]]
            self.counts.read += fits
            self.nbytes = fill[fits]
            taken += fits
            if taken < len(lines):
                self.flush((source, records[taken]))  # full: the next record starts the next batch


class _Positions(Sequence[Position]):
    """The input positions of a batch's records, made only when asked for (a refusal)."""

    def __init__(self, source: int, records: Sequence[int]) -> None:
        self.source = source
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Position: ...
    @overload
    def __getitem__(self, index: slice) -> list[Position]: ...
    def __getitem__(self, index: int | slice) -> Position | list[Position]:
        if isinstance(index, slice):
            return [(self.source, record) for record in self.records[index]]
        return (self.source, self.records[index])


class _Lines(Sequence[bytes]):
    """A text chunk's lines as a batch's, split out of its text only when asked for (a
    refusal, a 413): the chunk's own `raws`, which its lack of blank lines makes the lines."""

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk

    def __len__(self) -> int:
        return self.chunk.lines

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        raws = self.chunk.raws
        assert raws is not None  # a text chunk's
        return raws[index]
