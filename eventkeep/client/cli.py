"""`eventkeep import` and `eventkeep pull`: argument parsing over the `eventkeep.client` API.

`register(subcommands)` adds both commands to the main `eventkeep` parser. Every option
reads the same way in both commands, and credentials and host also come from the
environment, so scripts can keep secrets out of command lines.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import signal
import sys
from typing import Any

from eventkeep.client.checkpoint import CheckpointMismatch
from eventkeep.client.connection import ConfigError, Connection
from eventkeep.client.importer import DEFAULT_BATCH_BYTES, EXIT_USAGE, Importer, ImportOptions
from eventkeep.client.pull import Puller, PullError, PullOptions
from eventkeep.client.sender import RetryPolicy
from eventkeep.client.shape import ShapeOptions
from eventkeep.client.sources import FORMATS, InputError, expand_inputs
from eventkeep.collector import keep_freed_memory
from eventkeep.ingest.limits import MAX_EVENTS_PER_REQUEST

IMPORT_EPILOG = """\
examples:
  eventkeep import events.ndjson.gz --host http://127.0.0.1:8000 --token $TOKEN
  eventkeep import exports/ --secret $SECRET --rejects rejects.ndjson --checkpoint job.ckpt
  eventkeep import 'data/*.csv' --event-column action --distinct-id-column user \\
      --time-column ts --time-zone Europe/Paris --token $TOKEN
  zcat big.ndjson.gz | eventkeep import - --region eu --service-account user:secret --project-id 42
  eventkeep import events.parquet --dry-run --rejects bad.ndjson

Credentials may come from EVENTKEEP_TOKEN, EVENTKEEP_SECRET, EVENTKEEP_SERVICE_ACCOUNT
(USER:SECRET) and EVENTKEEP_PROJECT_ID; the host from EVENTKEEP_HOST (default
http://127.0.0.1:8000). Without --checkpoint, progress is checkpointed automatically in
~/.cache/eventkeep and a killed run resumes when run again with the same arguments.

exit status: 0 all imported; 1 all delivered but some events rejected (see --rejects);
2 bad arguments or input, or a checkpoint of another job; 3 some events not delivered
(re-run the same command to resume); 130 interrupted (progress saved).
"""

PULL_EPILOG = """\
examples:
  eventkeep pull --from-date 2024-01-01 --to-date 2024-01-31 -o jan.ndjson.gz --secret $SECRET
  eventkeep pull --from-date 2024-03-01 --to-date 2024-03-07 --event Purchased --event Refunded \\
      --where 'properties["plan"] == "pro"' -o week.parquet --host https://ek.example.com
  eventkeep pull --region eu --service-account user:secret --project-id 42 \\
      --from-date 2022-01-01 --to-date 2022-12-31 --project-time-zone America/New_York \\
      --strip-ingestion-props -o 2022.ndjson.zst

Dates are inclusive and fetched one day per request (one hour per request for days that
keep failing); fetched days are kept in OUTPUT.parts/ until the output is assembled, so a
killed pull resumes where it stopped. Against Mixpanel, requests keep to its export limits
(3 per second, 60 per hour) unless --max-qps/--max-per-hour say otherwise.

exit status: 0 complete; 2 bad arguments; 3 some days could not be fetched (nothing is
written; re-run to resume); 130 interrupted.
"""


def _connection_flags(parser: argparse.ArgumentParser, *, token: bool) -> None:
    group = parser.add_argument_group("destination and credentials")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--host", metavar="URL",
                       help="server base URL, e.g. --host http://127.0.0.1:8000 (env EVENTKEEP_HOST; "
                            "default http://127.0.0.1:8000)")
    where.add_argument("--region", choices=["us", "eu", "in"],
                       help="Mixpanel's hosts for a data-residency region, e.g. --region eu "
                            "(api-eu.mixpanel.com / data-eu.mixpanel.com)")
    if token:
        group.add_argument("--token", help="project token, e.g. --token 3f2a… (env EVENTKEEP_TOKEN)")
    group.add_argument("--secret", help="project API secret, e.g. --secret 9c1d… (env EVENTKEEP_SECRET)")
    group.add_argument("--service-account", metavar="USER:SECRET",
                       help="service account, with --project-id, e.g. --service-account sa.bob:Xy… "
                            "(env EVENTKEEP_SERVICE_ACCOUNT)")
    group.add_argument("--project-id", help="project id, e.g. --project-id 42 (env EVENTKEEP_PROJECT_ID)")


def _retry_flags(parser: argparse.ArgumentParser, concurrency: int) -> None:
    group = parser.add_argument_group("requests and retries")
    group.add_argument("--concurrency", type=int, default=concurrency,
                       help=f"requests in flight at once, e.g. --concurrency 16 (default {concurrency})")
    group.add_argument("--max-attempts", type=int, default=10,
                       help="attempts per request before giving up, e.g. --max-attempts 20 (default 10)")
    group.add_argument("--backoff-base", type=float, default=2.0, metavar="SECONDS",
                       help="first retry delay, doubled each time; jitter is 0.5–2.5× this, "
                            "e.g. --backoff-base 0.05 (default 2)")
    group.add_argument("--backoff-max", type=float, default=60.0, metavar="SECONDS",
                       help="longest delay between retries, e.g. --backoff-max 30 (default 60); "
                            "a server's Retry-After is always honoured")
    group.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="seconds to wait for a server reply, e.g. --timeout 300 "
                            "(default 120 for import, 600 for pull)")


def _report_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reporting")
    group.add_argument("--progress", choices=["auto", "bar", "lines", "none"], default="auto",
                       help="progress display: a bar on a terminal, periodic lines otherwise, e.g. --progress lines")
    group.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                       help="seconds between progress lines when not a terminal, e.g. --progress-interval 30")
    group.add_argument("--json", action="store_true",
                       help="print the final summary as JSON on standard output, e.g. --json | jq .imported")


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `import` and `pull` to the `eventkeep` command."""
    imp = subcommands.add_parser(
        "import",
        help="import events from NDJSON, JSON, CSV or Parquet files into eventkeep or Mixpanel",
        description="Import events in bulk through /import: validated locally with the server's own rules, "
                    "sent in gzip batches of up to 2000 with retries, resumable after a crash.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("inputs", nargs="*", metavar="FILES",
                     help="files, folders (read recursively), globs or - for standard input; plain, "
                          "gzip or zstd, e.g. events.ndjson.gz 'logs/*.jsonl' exports/")
    _connection_flags(imp, token=True)
    fmt = imp.add_argument_group("input format")
    fmt.add_argument("--format", choices=["auto", *FORMATS], default="auto",
                     help="input format; auto reads the file name and first bytes, e.g. --format csv")
    fmt.add_argument("--csv-delimiter", metavar="CHAR", help="CSV field separator, e.g. --csv-delimiter ';'")
    fmt.add_argument("--shape", choices=["auto", "mixpanel", "flat"], default="auto",
                     help="mixpanel: {event, properties:{…}}; flat: one column per field; auto: flat for "
                          "CSV/Parquet and for JSON objects without a properties object, e.g. --shape flat")
    fmt.add_argument("--event-column", default="event", metavar="NAME",
                     help="flat rows: the column holding the event name, e.g. --event-column action")
    fmt.add_argument("--distinct-id-column", default="distinct_id", metavar="NAME",
                     help="flat rows: the column holding the user id, e.g. --distinct-id-column user_id")
    fmt.add_argument("--time-column", default="time", metavar="NAME",
                     help="flat rows: the column holding the time (epoch s or ms, ISO-8601), e.g. --time-column ts")
    fmt.add_argument("--insert-id-column", default="$insert_id", metavar="NAME",
                     help="flat rows: the column holding a unique event id, e.g. --insert-id-column uuid; "
                          "events without one get a deterministic hash so re-runs never duplicate")
    fmt.add_argument("--time-unit", choices=["auto", "s", "ms"], default="auto",
                     help="numeric times: seconds or milliseconds; auto treats |t| > 1e10 as ms, "
                          "like the server, e.g. --time-unit ms")
    fmt.add_argument("--time-zone", default="UTC", metavar="ZONE",
                     help="zone of times written without one (2024-03-01 12:00:00), e.g. --time-zone America/Chicago")
    fmt.add_argument("--infer-types", action="store_true",
                     help="CSV cells that look like numbers or true/false become numbers and booleans, "
                          "e.g. --infer-types (007 stays a string)")
    run = imp.add_argument_group("batching, checkpoint and rejects")
    run.add_argument("--batch-size", type=int, default=MAX_EVENTS_PER_REQUEST,
                     help=f"events per request, at most {MAX_EVENTS_PER_REQUEST}, e.g. --batch-size 500")
    run.add_argument("--batch-bytes", type=int, default=DEFAULT_BATCH_BYTES,
                     help=f"uncompressed bytes per request, e.g. --batch-bytes 2000000 (default {DEFAULT_BATCH_BYTES})")
    run.add_argument("--rejects", metavar="FILE",
                     help="write refused events here as NDJSON (event, index, field, message), e.g. --rejects bad.ndjson")
    run.add_argument("--checkpoint", metavar="FILE",
                     help="progress file for resuming, kept after success, e.g. --checkpoint job.ckpt "
                          "(default: automatic, in ~/.cache/eventkeep, removed after success)")
    run.add_argument("--no-checkpoint", action="store_true",
                     help="do not record progress, e.g. for a one-off small file")
    run.add_argument("--restart", action="store_true",
                     help="ignore and replace an existing checkpoint, e.g. after changing the input on purpose")
    run.add_argument("--dry-run", action="store_true",
                     help="validate and report only; nothing is sent, e.g. --dry-run --rejects bad.ndjson")
    _retry_flags(imp, 10)
    _report_flags(imp)
    imp.set_defaults(func=cmd_import)

    pull = subcommands.add_parser(
        "pull",
        help="download raw events from eventkeep's or Mixpanel's export API",
        description="Download raw events over an inclusive date range, one request per day in parallel, "
                    "with retries and resume; write NDJSON (optionally gzip/zstd), CSV or Parquet.",
        epilog=PULL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_flags(pull, token=False)
    query = pull.add_argument_group("what to fetch")
    query.add_argument("--from-date", required=True, metavar="YYYY-MM-DD",
                       help="first day (inclusive, in the project's time zone), e.g. --from-date 2024-01-01")
    query.add_argument("--to-date", required=True, metavar="YYYY-MM-DD",
                       help="last day (inclusive), e.g. --to-date 2024-01-31")
    query.add_argument("--event", action="append", metavar="NAME",
                       help="only this event; repeat for more, e.g. --event Signup --event Purchase")
    query.add_argument("--where", metavar="EXPR",
                       help="a filter expression, e.g. --where 'properties[\"plan\"] == \"pro\"'")
    query.add_argument("--hourly", action="store_true",
                       help="one request per hour instead of per day (for very heavy days), e.g. --hourly")
    out = pull.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="FILE",
                     help="output file; .gz or .zst compresses; .csv/.parquet choose the format; "
                          "default standard output, e.g. -o events.ndjson.gz")
    out.add_argument("--format", choices=["auto", "ndjson", "csv", "parquet"], default="auto",
                     help="output format (auto: from the file name, else NDJSON), e.g. --format csv")
    out.add_argument("--project-time-zone", metavar="ZONE",
                     help="the project exports local time (Mixpanel projects made before 2023): convert times "
                          "back to UTC with this zone's rules, e.g. --project-time-zone Europe/Berlin")
    out.add_argument("--strip-ingestion-props", action="store_true",
                     help="drop $import, $mp_api_endpoint, $mp_api_timestamp_ms, $mp_event_size and "
                          "mp_processing_time_ms so the output re-imports cleanly, e.g. --strip-ingestion-props")
    out.add_argument("--time-in-seconds", action="store_true",
                     help="ask for second-precision times instead of milliseconds, e.g. --time-in-seconds")
    out.add_argument("--work-dir", metavar="DIR",
                     help="where fetched days wait for assembly (default OUTPUT.parts), e.g. --work-dir /tmp/pull")
    out.add_argument("--keep-parts", action="store_true", help="keep the per-day files after assembly, e.g. --keep-parts")
    out.add_argument("--restart", action="store_true", help="discard days fetched by an earlier run, e.g. --restart")
    _retry_flags(pull, 4)
    limits = pull.add_argument_group("rate limits")
    limits.add_argument("--max-qps", type=float, metavar="N",
                        help="requests started per second (default 3 against Mixpanel, unlimited otherwise), "
                             "e.g. --max-qps 1")
    limits.add_argument("--max-per-hour", type=int, metavar="N",
                        help="requests per rolling hour (default 60 against Mixpanel, unlimited otherwise), "
                             "e.g. --max-per-hour 50")
    _report_flags(pull)
    pull.set_defaults(func=cmd_pull)


def _connection(args: argparse.Namespace) -> Connection:
    return Connection.resolve(
        host=args.host,
        region=args.region,
        token=getattr(args, "token", None),
        secret=args.secret,
        service_account=args.service_account,
        project_id=args.project_id,
    )


def _retry(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(args.max_attempts, args.backoff_base, args.backoff_max)


def _fail(command: str, message: str) -> int:
    print(f"eventkeep {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _sigterm_as_interrupt() -> None:
    """SIGTERM stops like Ctrl-C: in-flight work settles and the checkpoint is saved."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGTERM, handler)


def _emit(summary: Any, as_json: bool, stdout_taken: bool = False) -> None:
    sys.stderr.write(summary.render())
    if as_json:
        stream = sys.stderr if stdout_taken else sys.stdout
        stream.write(json.dumps(summary.to_json()) + "\n")
        stream.flush()


def cmd_import(args: argparse.Namespace) -> int:
    keep_freed_memory()  # this process is the tool's own, not a caller's
    inputs = list(args.inputs)
    if not inputs:
        if sys.stdin.isatty():
            return _fail("import", "give FILES to import, or - to read standard input")
        inputs = ["-"]
    try:
        connection = _connection(args)
        if not args.dry_run:
            connection.auth_header("import")  # fail now, not after reading
        shape = ShapeOptions(
            shape=args.shape,
            event_column=args.event_column,
            distinct_id_column=args.distinct_id_column,
            time_column=args.time_column,
            insert_id_column=args.insert_id_column,
            time_unit=args.time_unit,
            time_zone=args.time_zone,
            infer_types=args.infer_types,
        )
        shape.zone()
        options = ImportOptions(
            format=args.format,
            shape=shape,
            csv_delimiter=args.csv_delimiter,
            batch_size=args.batch_size,
            batch_bytes=args.batch_bytes,
            concurrency=args.concurrency,
            retry=_retry(args),
            timeout=args.timeout or 120.0,
            rejects=args.rejects,
            checkpoint=args.checkpoint,
            use_checkpoint=not args.no_checkpoint,
            restart=args.restart,
            dry_run=args.dry_run,
            progress=args.progress,
            progress_interval=args.progress_interval,
        )
        importer = Importer(None if args.dry_run else connection, expand_inputs(inputs), options)
        _sigterm_as_interrupt()
        summary = importer.run()
    except (ConfigError, InputError, CheckpointMismatch, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, CheckpointMismatch):
            message += "; use --restart to start over, or another --checkpoint"
        return _fail("import", message)
    _emit(summary, args.json)
    return summary.exit_status


def _date(value: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise PullError(f"{flag} must be a date in yyyy-mm-dd format, got {value!r}") from None


def cmd_pull(args: argparse.Namespace) -> int:
    keep_freed_memory()
    try:
        connection = _connection(args)
        connection.auth_header("export")
        options = PullOptions(
            from_date=_date(args.from_date, "--from-date"),
            to_date=_date(args.to_date, "--to-date"),
            output=args.output,
            format=args.format,
            events=args.event,
            where=args.where,
            project_time_zone=args.project_time_zone,
            strip_ingestion=args.strip_ingestion_props,
            time_in_ms=not args.time_in_seconds,
            hourly=args.hourly,
            concurrency=args.concurrency,
            retry=_retry(args),
            timeout=args.timeout or 600.0,
            max_qps=args.max_qps,
            max_per_hour=args.max_per_hour,
            work_dir=args.work_dir,
            restart=args.restart,
            keep_parts=args.keep_parts,
            progress=args.progress,
            progress_interval=args.progress_interval,
        )
        puller = Puller(connection, options)
        _sigterm_as_interrupt()
        summary = puller.run()
    except (ConfigError, PullError) as exc:
        return _fail("pull", str(exc))
    _emit(summary, args.json, stdout_taken=args.output in (None, "-"))
    return summary.exit_status
