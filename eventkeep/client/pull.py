"""`eventkeep pull`: raw events from eventkeep's or Mixpanel's export API, day by day.

The range is cut into one request per day (`from_date = to_date = day`; both are inclusive,
so adjacent multi-day chunks would fetch their shared day twice, a known trap), fetched in
parallel with retries. Each finished chunk is a file in a work folder beside the output,
renamed into place only once complete, so a killed pull resumes by fetching only the
chunks that are missing; the output is assembled from the chunks, in date order, at the end.

A chunk is complete only if every line is a JSON object and the last one ends the body: a
trailing `export terminated early` line, a truncated last line or a dropped connection is a
retryable failure of that chunk, never a short file. A day that keeps failing that way is
fetched again hour by hour (`event["$time"]` ranges that together cover the day exactly).

Against Mixpanel the client keeps to the export limits (3 queries/s, 60/hour) by itself.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import random
import shutil
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TextIO, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import orjson

from eventkeep import __version__
from eventkeep.client.checkpoint import atomic_write, default_path, job_digest
from eventkeep.client.connection import Connection
from eventkeep.client.progress import Mode, Progress, Snapshot, human_duration, retries_line
from eventkeep.client.sender import RetryPolicy, parse_retry_after
from eventkeep.collector import fewer_collections

if TYPE_CHECKING:  # imported where a pull runs: `eventkeep import` never needs it
    import httpx

OutputFormat = Literal["auto", "ndjson", "csv", "parquet"]

# Added by ingestion (spec §2.6); stripped, an export re-imports as the events first sent.
INGESTION_PROPERTIES = ("$import", "$mp_api_endpoint", "$mp_api_timestamp_ms", "$mp_event_size", "mp_processing_time_ms")
TERMINATED_EARLY = b"export terminated early"
MIXPANEL_QPS = 3.0
MIXPANEL_PER_HOUR = 60
EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130

_decoder = msgspec.json.Decoder()


class PullError(Exception):
    """A problem that stops the whole pull (bad parameters, credentials): exit status 2 or 3."""


class ChunkFailure(Exception):
    """A chunk that may succeed if tried again; `truncated` marks cut-off bodies."""

    def __init__(self, message: str, *, retry_after: float | None = None, truncated: bool = False, status: int = 0):
        super().__init__(message)
        self.retry_after = retry_after
        self.truncated = truncated
        self.status = status


@dataclass
class PullOptions:
    from_date: dt.date
    to_date: dt.date
    output: str | None = None  # None or "-": standard output
    format: OutputFormat = "auto"
    events: list[str] | None = None
    where: str | None = None
    project_time_zone: str | None = None
    strip_ingestion: bool = False
    time_in_ms: bool = True
    hourly: bool = False
    split_after: int = 2
    concurrency: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = 600.0
    max_qps: float | None = None  # None: Mixpanel's 3/s against Mixpanel, unlimited otherwise
    max_per_hour: int | None = None  # None: Mixpanel's 60/hour against Mixpanel, else unlimited
    work_dir: str | None = None
    restart: bool = False
    keep_parts: bool = False
    progress: Mode = "none"
    progress_interval: float = 10.0
    seed: int | None = None

    def check(self) -> None:
        if self.to_date < self.from_date:
            raise PullError(f"--to-date {self.to_date} is before --from-date {self.from_date}")
        if self.concurrency < 1:
            raise PullError("--concurrency must be at least 1")
        if self.retry.max_attempts < 1:
            raise PullError("--max-attempts must be at least 1")
        if self.project_time_zone:
            zone_of(self.project_time_zone)

    def resolved_format(self) -> Literal["ndjson", "csv", "parquet"]:
        if self.format != "auto":
            return self.format
        name = _without_compression(self.output or "")
        if name.endswith((".csv", ".tsv")):
            return "csv"
        if name.endswith((".parquet", ".pq")):
            return "parquet"
        return "ndjson"


def _without_compression(name: str) -> str:
    name = name.lower()
    for suffix in (".gz", ".gzip", ".zst", ".zstd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def zone_of(name: str) -> dt.tzinfo:
    if name.upper() in ("UTC", "Z"):
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PullError(f"unknown time zone {name!r} (use an IANA name such as America/New_York)") from None


@dataclass(frozen=True)
class Job:
    """One request: a day, or one hour-slice of a day (`hour` counts slices from midnight)."""

    day: dt.date
    hour: int | None = None

    @property
    def name(self) -> str:
        return f"{self.day.isoformat()}" + (f".h{self.hour:02d}" if self.hour is not None else "")


def hour_bounds(day: dt.date, zone: dt.tzinfo) -> list[tuple[int | None, int | None]]:
    """A day (midnight to midnight in `zone`) as consecutive hour slices, in epoch seconds.

    The first slice has no lower bound and the last no upper bound, so the slices' filters
    partition all time; together with from_date = to_date = day they cover the day's events
    exactly once, even where the server's idea of the day's edges differs from ours.
    """
    start = dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
    nxt = day + dt.timedelta(days=1)
    end = dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).timestamp()
    count = max(1, math.ceil((end - start) / 3600))
    cuts = [int(start + 3600 * k) for k in range(1, count)]
    lows: list[int | None] = [None, *cuts]
    highs: list[int | None] = [*cuts, None]
    return list(zip(lows, highs, strict=True))


def _utc_literal(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def slice_where(where: str | None, low: int | None, high: int | None) -> str | None:
    parts = []
    if low is not None:
        parts.append(f'event["$time"] >= datetime("{_utc_literal(low)}")')
    if high is not None:
        parts.append(f'event["$time"] < datetime("{_utc_literal(high)}")')
    clause = " and ".join(parts)
    if where and where.strip():
        return f"({where}) and ({clause})" if clause else where
    return clause or None


class RateLimiter:
    """At most `per_second` request starts a second and `per_hour` in any rolling hour."""

    def __init__(
        self,
        per_second: float | None,
        per_hour: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.per_hour = per_hour or 0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._last = -math.inf
        self._hour: deque[float] = deque()

    def acquire(self) -> None:
        with self._lock:  # held while sleeping: waiting callers queue up in order
            while True:
                now = self._clock()
                while self._hour and now - self._hour[0] >= 3600:
                    self._hour.popleft()
                wait_for = self._last + self.interval - now
                if self.per_hour and len(self._hour) >= self.per_hour:
                    wait_for = max(wait_for, self._hour[0] + 3600 - now)
                if wait_for <= 0:
                    self._last = now
                    if self.per_hour:
                        self._hour.append(now)
                    return
                self._sleep(wait_for)


class TimeConverter:
    """Project-local export times back to UTC, with the zone's real rules (DST included).

    Mixpanel projects created before 2023 (and eventkeep projects in legacy-local-time mode)
    export `time` as the wall-clock time in the project's zone, written as if it were UTC.
    The offset is looked up for that wall-clock time; in the hour repeated when clocks go
    back, a wall-clock time names two instants and the first is taken.
    """

    def __init__(self, zone: dt.tzinfo, in_ms: bool) -> None:
        self.zone = zone
        self.in_ms = in_ms
        self._offsets: dict[int, int] = {}

    def to_utc(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        seconds = value / 1000 if self.in_ms else value
        bucket = int(seconds // 900)
        offset = self._offsets.get(bucket)
        if offset is None:
            wall = dt.datetime(1970, 1, 1) + dt.timedelta(seconds=bucket * 900)
            delta = wall.replace(tzinfo=self.zone).utcoffset() or dt.timedelta(0)
            offset = int(delta.total_seconds())
            if len(self._offsets) > 200_000:
                self._offsets.clear()
            self._offsets[bucket] = offset
        return value - offset * 1000 if self.in_ms else value - offset


@dataclass
class PullSummary:
    days: int
    chunks: int
    events: int
    elapsed: float
    requests: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    failed_chunks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    split_days: list[str] = field(default_factory=list)
    resumed_chunks: int = 0
    output: str | None = None
    work_dir: str | None = None
    interrupted: bool = False

    @property
    def exit_status(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed_chunks or self.errors else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "chunks": self.chunks,
            "events": self.events,
            "elapsed_s": round(self.elapsed, 3),
            "requests": self.requests,
            "retries": self.retries,
            "retry_reasons": self.retry_reasons,
            "failed_chunks": self.failed_chunks,
            "errors": self.errors,
            "split_days": self.split_days,
            "resumed_chunks": self.resumed_chunks,
            "output": self.output,
            "work_dir": self.work_dir,
            "interrupted": self.interrupted,
            "exit_status": self.exit_status,
        }

    def render(self) -> str:
        ok = self.exit_status == EXIT_OK
        head = "done" if ok else ("interrupted" if self.interrupted else "INCOMPLETE")
        lines = [
            f"eventkeep pull: {head} in {human_duration(self.elapsed)}: {self.days} days in {self.chunks} requests"
            f" ({self.resumed_chunks} already fetched), {self.events:,} events"
            + (f" written to {self.output}" if ok and self.output else "")
        ]
        lines.append(retries_line(self.retries, self.retry_reasons, self.requests))
        if self.split_days:
            lines.append(f"  fetched hour by hour: {', '.join(self.split_days[:10])}")
        for error in self.errors[:5]:
            lines.append(f"  error: {error}")
        if self.failed_chunks:
            lines.append(f"  failed chunks: {', '.join(self.failed_chunks[:10])}; no output was written")
        if not ok and self.work_dir:
            lines.append(f"  fetched chunks are kept in {self.work_dir}; run the same command again to resume")
        return "\n".join(lines) + "\n"


class Puller:
    def __init__(
        self,
        connection: Connection,
        options: PullOptions,
        *,
        transport: httpx.BaseTransport | None = None,
        progress_stream: TextIO | None = None,
        stdout: IO[bytes] | None = None,
    ) -> None:
        options.check()
        self.connection = connection
        self.options = options
        self.transport = transport
        self.progress_stream = progress_stream
        self.stdout = stdout
        self._auth = connection.auth_header("export")
        self._url = connection.export_url.rstrip("/") + "/api/2.0/export"
        qps = options.max_qps if options.max_qps is not None else (MIXPANEL_QPS if connection.mixpanel else None)
        hourly = options.max_per_hour if options.max_per_hour is not None else (
            MIXPANEL_PER_HOUR if connection.mixpanel else None
        )
        self.limiter = RateLimiter(qps or None, hourly or None)
        self.zone = zone_of(options.project_time_zone) if options.project_time_zone else dt.UTC
        self._rng = random.Random(options.seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests = 0
        self.retries: Counter[str] = Counter()
        self._events_done = 0
        self._chunks_done = 0
        self._chunks_total = 0

    # -- work folder and job identity ------------------------------------------------------

    def job(self) -> dict[str, Any]:
        o = self.options
        return {
            "kind": "pull",
            "source": self.connection.identity("export"),
            "from_date": o.from_date.isoformat(),
            "to_date": o.to_date.isoformat(),
            "events": o.events,
            "where": o.where,
            "project_time_zone": o.project_time_zone,
            "strip_ingestion": o.strip_ingestion,
            "time_in_ms": o.time_in_ms,
        }

    def _work_dir(self) -> Path:
        o = self.options
        if o.work_dir:
            return Path(o.work_dir)
        if o.output and o.output != "-":
            return Path(o.output + ".parts")
        return default_path("pull", self.job()).with_suffix("")

    def _prepare_work_dir(self, folder: Path) -> None:
        manifest = folder / "job.json"
        if self.options.restart and folder.exists():
            shutil.rmtree(folder)
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
            except ValueError:
                old = {}
            if old.get("digest") != job_digest(self.job()):
                raise PullError(
                    f"{folder} holds chunks of a different pull (other dates, filters or source); "
                    "use --restart to discard them, or another -o / --work-dir"
                )
            return
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(manifest, json.dumps({"digest": job_digest(self.job()), "job": self.job()}, indent=1).encode())

    # -- running ------------------------------------------------------------------------

    def days(self) -> list[dt.date]:
        o = self.options
        return [o.from_date + dt.timedelta(days=i) for i in range((o.to_date - o.from_date).days + 1)]

    def _jobs_for(self, day: dt.date, folder: Path) -> list[Job]:
        if self.options.hourly or (folder / f"{day.isoformat()}.split").exists():
            return [Job(day, h) for h in range(len(hour_bounds(day, self.zone)))]
        return [Job(day)]

    def run(self) -> PullSummary:
        started = time.monotonic()
        folder = self._work_dir()
        self._prepare_work_dir(folder)
        days = self.days()
        pending: list[Job] = []
        resumed = 0
        for day in days:
            for job in self._jobs_for(day, folder):
                if (folder / f"{job.name}.ndjson").exists():
                    resumed += 1
                else:
                    pending.append(job)
        self._chunks_total = resumed + len(pending)
        self._chunks_done = resumed
        failed: list[str] = []
        errors: list[str] = []
        split_days: list[str] = []
        progress = Progress(self._snapshot, mode=self.options.progress, interval=self.options.progress_interval,
                            stream=self.progress_stream, label="pull")
        progress.start()
        interrupted = False
        import httpx

        limits = httpx.Limits(max_connections=self.options.concurrency)
        client = httpx.Client(
            timeout=httpx.Timeout(self.options.timeout, connect=15.0),
            limits=limits,
            transport=self.transport,
        )
        try:
            with fewer_collections(), ThreadPoolExecutor(max_workers=min(self.options.concurrency, 100)) as pool:
                running: dict[Future[str | None], Job] = {pool.submit(self._fetch, client, job, folder): job for job in pending}
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        job = running.pop(future)
                        try:
                            result = future.result()
                        except PullError as exc:
                            errors.append(str(exc))
                            self._stop.set()
                            continue
                        if result == "split":
                            split_days.append(job.day.isoformat())
                            atomic_write(folder / f"{job.day.isoformat()}.split", b"")
                            hours = self._jobs_for(job.day, folder)
                            with self._lock:
                                self._chunks_total += len(hours) - 1
                            for hour_job in hours:
                                if not (folder / f"{hour_job.name}.ndjson").exists():
                                    running[pool.submit(self._fetch, client, hour_job, folder)] = hour_job
                        elif result is not None:
                            failed.append(f"{job.name} ({result})")
        except KeyboardInterrupt:
            interrupted = True
            self._stop.set()
        finally:
            client.close()
            progress.stop()
        summary = PullSummary(
            days=len(days),
            chunks=self._chunks_total,
            events=0,
            elapsed=0.0,
            requests=self.requests,
            retries=sum(self.retries.values()),
            retry_reasons=dict(self.retries),
            failed_chunks=failed,
            errors=errors,
            split_days=split_days,
            resumed_chunks=resumed,
            output=self.options.output if self.options.output not in (None, "-") else "<stdout>",
            work_dir=str(folder),
            interrupted=interrupted,
        )
        if not failed and not errors and not interrupted:
            parts = [folder / f"{job.name}.ndjson" for day in days for job in self._jobs_for(day, folder)]
            summary.events = self._assemble(parts)
            if not self.options.keep_parts:
                shutil.rmtree(folder, ignore_errors=True)
                summary.work_dir = None
        summary.elapsed = time.monotonic() - started
        return summary

    def _snapshot(self) -> Snapshot:
        return Snapshot(self._chunks_done, self._chunks_total or None, self._events_done, self._events_done, 0,
                        sum(self.retries.values()))

    # -- one chunk ----------------------------------------------------------------------

    def _params(self, job: Job) -> dict[str, str]:
        o = self.options
        params = {"from_date": job.day.isoformat(), "to_date": job.day.isoformat(), **self.connection.params()}
        if o.events:
            params["event"] = json.dumps(o.events)
        where = o.where
        if job.hour is not None:
            low, high = hour_bounds(job.day, self.zone)[job.hour]
            where = slice_where(where, low, high)
        if where:
            params["where"] = where
        if o.time_in_ms:
            params["time_in_ms"] = "true"
        return params

    def _fetch(self, client: httpx.Client, job: Job, folder: Path) -> str | None:
        """Fetch one chunk into its part file: None when done, "split", or why it failed."""
        policy = self.options.retry
        truncations = 0
        attempt = 0
        while True:
            attempt += 1
            if self._stop.is_set():
                return "stopped"
            try:
                events = self._download(client, job, folder)
            except ChunkFailure as failure:
                if failure.truncated:
                    truncations += 1
                    if job.hour is None and truncations >= self.options.split_after and not self.options.hourly:
                        return "split"
                if attempt >= policy.max_attempts:
                    return f"gave up after {attempt} attempts; last: {failure}"
                reason = str(failure.status) if failure.status else ("truncated" if failure.truncated else "network")
                with self._lock:
                    self.retries[reason] += 1
                    delay = failure.retry_after if failure.retry_after is not None else policy.backoff(attempt, self._rng)
                self._stop.wait(delay)
                continue
            with self._lock:
                self._chunks_done += 1
                self._events_done += events
            return None

    def _download(self, client: httpx.Client, job: Job, folder: Path) -> int:
        import httpx

        self.limiter.acquire()
        with self._lock:
            self.requests += 1
        final = folder / f"{job.name}.ndjson"
        tmp = folder / f"{job.name}.ndjson.tmp"
        headers = {"Authorization": self._auth, "Accept-Encoding": "gzip", "User-Agent": f"eventkeep-pull/{__version__}"}
        transform = self._transformer()
        count = 0
        streaming = False
        try:
            with client.stream("GET", self._url, params=self._params(job), headers=headers) as response:
                status = response.status_code
                if status != 200:
                    response.read()
                    text = response.text.strip()[:300]
                    if status == 429 or status == 408 or status >= 500:
                        raise ChunkFailure(f"HTTP {status} {text}", status=status,
                                           retry_after=parse_retry_after(response.headers.get("retry-after")))
                    raise PullError(f"{job.name}: the export API answered HTTP {status}: {text}")
                streaming = True
                with open(tmp, "wb") as out:
                    pending = b""
                    for block in response.iter_bytes():
                        data = pending + block if pending else block
                        lines = data.split(b"\n")
                        pending = lines.pop()
                        if lines:
                            count += self._write_lines(lines, out, transform)
                    if pending.strip():
                        # The body must end with a newline; a last line that does not is
                        # accepted only if it is a whole event (a cut one never parses).
                        count += self._write_lines([pending], out, transform)
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.TransportError as exc:
            # A body cut mid-stream, or a day too slow to serve, is what hourly chunks cure.
            cut = streaming or isinstance(exc, httpx.TimeoutException)
            raise ChunkFailure(f"network: {type(exc).__name__} {exc}".strip(), truncated=cut) from None
        except ChunkFailure:
            raise
        except PullError:
            raise
        except OSError as exc:
            raise PullError(f"{tmp}: {exc.strerror}") from None
        os.replace(tmp, final)
        return count

    def _transformer(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        o = self.options
        converter = TimeConverter(self.zone, o.time_in_ms) if o.project_time_zone else None
        if converter is None and not o.strip_ingestion:
            return None

        def transform(event: dict[str, Any]) -> dict[str, Any]:
            props = event.get("properties")
            if isinstance(props, dict):
                if o.strip_ingestion:
                    for key in INGESTION_PROPERTIES:
                        props.pop(key, None)
                if converter is not None and "time" in props:
                    props["time"] = converter.to_utc(props["time"])
            return event

        return transform

    def _write_lines(self, lines: list[bytes], out: IO[bytes], transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> int:
        lines = [line for line in lines if line.strip()]
        if not lines:
            return 0
        try:
            items = _decoder.decode(b"[" + b",".join(lines) + b"]")
            if not isinstance(items, list) or len(items) != len(lines) or not all(isinstance(i, dict) for i in items):
                raise ValueError
        except (msgspec.DecodeError, ValueError, UnicodeDecodeError):
            for line in lines:
                if line.strip() == TERMINATED_EARLY or b"terminated early" in line[:64]:
                    raise ChunkFailure("the server ended the export early", truncated=True) from None
            raise ChunkFailure("the export body has a line that is not a JSON event (cut short?)", truncated=True) from None
        if transform is None:
            out.write(b"\n".join(lines) + b"\n")
        else:
            out.write(b"".join(orjson.dumps(transform(item)) + b"\n" for item in items))
        return len(items)

    # -- the output ---------------------------------------------------------------------

    def _assemble(self, parts: list[Path]) -> int:
        fmt = self.options.resolved_format()
        output = self.options.output
        if output in (None, "-"):
            sink = self.stdout or sys.stdout.buffer
            return self._write_format(fmt, parts, sink, None)
        assert output is not None
        target = Path(output)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            count = self._write_format(fmt, parts, None, tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return count

    def _write_format(self, fmt: str, parts: list[Path], sink: IO[bytes] | None, path: Path | None) -> int:
        if fmt == "parquet":
            if path is None:
                raise PullError("Parquet output needs a file (-o FILE.parquet), not standard output")
            return write_parquet(parts, path)
        with _compressed_writer(sink, path, self.options.output or "") as out:
            if fmt == "csv":
                delimiter = "\t" if _without_compression(self.options.output or "").endswith(".tsv") else ","
                return write_csv(parts, out, delimiter)
            count = 0
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        count += block.count(b"\n")
                        out.write(block)
            return count


class _compressed_writer:
    """Where the output bytes go: a file (gzip or zstd by its name) or standard output."""

    def __init__(self, sink: IO[bytes] | None, path: Path | None, name: str) -> None:
        self.sink = sink
        self.path = path
        self.name = name.lower()
        self._closers: list[Callable[[], None]] = []

    def __enter__(self) -> IO[bytes]:
        base: IO[bytes]
        if self.path is not None:
            base = open(self.path, "wb")
            self._closers.append(base.close)
        else:
            assert self.sink is not None
            base = self.sink
        if self.name.endswith((".gz", ".gzip")):
            from isal import igzip_threaded

            stream: IO[bytes] = igzip_threaded.open(base, "wb", compresslevel=2, threads=1)
            self._closers.insert(0, stream.close)
            return stream
        if self.name.endswith((".zst", ".zstd")):
            import pyarrow as pa

            arrow = pa.CompressedOutputStream(pa.PythonFile(base, mode="w"), "zstd")
            self._closers.insert(0, arrow.close)
            return cast(IO[bytes], _ArrowWriter(arrow))
        return base

    def __exit__(self, *exc: object) -> None:
        for close in self._closers:
            close()
        if self.path is not None:
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())
        elif self.sink is not None:
            self.sink.flush()


class _ArrowWriter(io.RawIOBase):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._stream.write(bytes(data))
        return len(data)


def iter_part_events(parts: list[Path]) -> Iterator[dict[str, Any]]:
    for part in parts:
        with open(part, "rb") as f:
            for line in f:
                if line.strip():
                    yield _decoder.decode(line)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode()


def write_csv(parts: list[Path], out: IO[bytes], delimiter: str = ",") -> int:
    """Flat CSV: event, distinct_id, time, $insert_id, then every property seen (two passes,
    so the header names all of them without holding events in memory)."""
    columns: dict[str, None] = {"event": None, "distinct_id": None, "time": None, "$insert_id": None}
    for event in iter_part_events(parts):
        props = event.get("properties")
        if isinstance(props, dict):
            for key in props:
                columns.setdefault(key, None)
    names = list(columns)
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, delimiter=delimiter)
    writer.writerow(names)
    count = 0
    for event in iter_part_events(parts):
        props = event.get("properties") if isinstance(event.get("properties"), dict) else {}
        assert isinstance(props, dict)
        writer.writerow([_cell(event.get("event"))] + [_cell(props.get(n)) for n in names[1:]])
        count += 1
    text.flush()
    text.detach()
    return count


def write_parquet(parts: list[Path], path: Path, rows_per_group: int = 50_000) -> int:
    """Parquet with typed event fields and the other properties as one JSON text column:
    exact types survive, and `eventkeep import` reads it back (it merges `properties`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("event", pa.string()),
            ("distinct_id", pa.string()),
            ("time", pa.int64()),
            ("$insert_id", pa.string()),
            ("properties", pa.string()),
        ]
    )
    count = 0
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        columns: dict[str, list[Any]] = {name: [] for name in schema.names}

        def flush() -> None:
            if columns["event"]:
                writer.write_table(pa.table(columns, schema=schema))
                for values in columns.values():
                    values.clear()

        for event in iter_part_events(parts):
            props = dict(event.get("properties") or {})
            time_value = props.pop("time", None)
            distinct_id = props.pop("distinct_id", None)
            columns["event"].append(event.get("event"))
            columns["distinct_id"].append(None if distinct_id is None else str(distinct_id))
            columns["time"].append(int(time_value) if isinstance(time_value, int | float) else None)
            columns["$insert_id"].append(props.pop("$insert_id", None))
            columns["properties"].append(orjson.dumps(props).decode())
            count += 1
            if len(columns["event"]) >= rows_per_group:
                flush()
        flush()
    return count
