"""Import-tool benchmark: `eventkeep import` against mixpanel-utils and the official SDK.

Writes one NDJSON file of N realistic events (5% of them re-sent duplicates, as in
bench/ingest.py), starts one eventkeep server, gives each contender a project of its own and
imports the same file with:

- `eventkeep import FILE --host URL --secret S` (the project's command-line tool, defaults);
- mixpanel-utils `MixpanelUtils(secret, token=…).import_events(FILE, timezone_offset=0)`, its
  base URLs repointed at the server (as tests/clients/test_mixpanel_utils.py does);
- the official `mixpanel` SDK: `Mixpanel(token, consumer=BufferedConsumer(import_url=…))`,
  `import_data(…, api_secret=secret)` for each line of the file, then `flush()`.

Each contender runs as a separate process, timed from start to exit (file reading included),
and is stopped after `--time-limit` seconds. Then the project's stored count is read through
the export API and compared with the distinct events in the file. events/s is that stored count
over the wall time, for finished and stopped runs alike (so the ratios compare like with like). The tool under test runs last, against the fullest store. Before each contender
the server is left idle for `--settle` seconds (default 3), so that the checkpoint it makes
of the previous contender's writes at its first idle second is not charged to the next one
(the clustering of those writes waits for 30 s without writes, so it does not start). Target: eventkeep import
>= 10x mixpanel-utils on the same file and server.

    python bench/import_tool.py --events 1000000
    python bench/import_tool.py --events 20000 --time-limit 60
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, ServerProcess, machine, realistic_events
from eventkeep.projects.sqlite import SQLiteRegistry

CONTENDERS = ("mixpanel-utils", "sdk", "eventkeep-import")

# Worker bodies, run as `python -c WORKER URL TOKEN SECRET FILE` in a directory of their own.
# Each prints one JSON line (what the library reported) on standard output.
MIXPANEL_UTILS_WORKER = """
import json, logging, sys
from mixpanel_utils import MixpanelUtils

url, token, secret, path = sys.argv[1:5]

class Count(logging.Handler):
    problems = 0
    def emit(self, record):
        Count.problems += 1
logging.getLogger("mixpanel_utils").addHandler(Count(logging.WARNING))

mpu = MixpanelUtils(secret, token=token)   # defaults: strict, pool of cpu_count * 2 threads
mpu.import_api = url                       # no host argument: repoint the base URLs
mpu.raw_api = url + "/api"
mpu.formatted_api = url + "/api"
mpu.import_events(path, timezone_offset=0)
print(json.dumps({"problems_logged": Count.problems}))
"""

SDK_WORKER = """
import json, logging, sys
from mixpanel import BufferedConsumer, Mixpanel

url, token, secret, path = sys.argv[1:5]
# import_data(api_secret=…) logs a deprecation warning per call: keep 1M lines off stderr.
logging.getLogger("mixpanel").setLevel(logging.ERROR)
consumer = BufferedConsumer(max_size=50, events_url=url + "/track", people_url=url + "/engage",
                            import_url=url + "/import", groups_url=url + "/groups", request_timeout=120)
mp = Mixpanel(token, consumer=consumer)
sent = 0
with open(path, "rb") as lines:
    for line in lines:
        event = json.loads(line)
        props = event["properties"]
        mp.import_data(None, props["distinct_id"], event["event"], props["time"], props, api_secret=secret)
        sent += 1
consumer.flush()
print(json.dumps({"sent": sent}))
"""


@dataclass
class Outcome:
    name: str
    status: int | None  # exit status; None: stopped at the time limit
    elapsed: float
    stored: int
    report: str  # the contender's own last words (summary line or error tail)

    @property
    def finished(self) -> bool:
        return self.status is not None

    @property
    def rate(self) -> float:
        return self.stored / self.elapsed if self.elapsed else 0.0


def generate(path: Path, count: int, duplicate_share: float) -> int:
    """Write the NDJSON file; return the number of distinct events in it."""
    keys: set[tuple[object, ...]] = set()
    block: list[bytes] = []
    with open(path, "wb") as out:
        for event in realistic_events(count, duplicate_share=duplicate_share):
            p = event["properties"]
            keys.add((event["event"], p["distinct_id"], p["time"], p["$insert_id"]))
            block.append(orjson.dumps(event))
            if len(block) >= 20_000:
                out.write(b"\n".join(block) + b"\n")
                block.clear()
        if block:
            out.write(b"\n".join(block) + b"\n")
    return len(keys)


def create_projects(data_dir: Path, names: list[str]) -> dict[str, tuple[str, str]]:
    """One project per contender in the running server's registry: name -> (token, secret)."""
    registry = SQLiteRegistry(data_dir / "projects.sqlite3")
    try:
        projects = {name: registry.create_project(f"bench-{name}") for name in names}
    finally:
        registry.close()
    return {name: (p.token, p.secret) for name, p in projects.items()}


def command_for(name: str, url: str, token: str, secret: str, path: Path, concurrency: int | None) -> list[str]:
    if name == "eventkeep-import":
        extra = ["--concurrency", str(concurrency)] if concurrency else []
        return [sys.executable, "-m", "eventkeep", "import", str(path), "--host", url, "--secret", secret,
                "--progress", "none", "--json", *extra]
    worker = MIXPANEL_UTILS_WORKER if name == "mixpanel-utils" else SDK_WORKER
    return [sys.executable, "-c", worker, url, token, secret, str(path)]


def run_contender(name: str, server: ServerProcess, token: str, secret: str, path: Path, workdir: Path,
                  time_limit: float, concurrency: int | None) -> Outcome:
    cwd = workdir / name  # mixpanel-utils writes import_backup.txt / invalid_events.txt here
    cwd.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache"), "PYTHONPATH": str(ROOT)}
    out_path, err_path = cwd / "stdout", cwd / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(command_for(name, server.url, token, secret, path, concurrency),
                                   cwd=cwd, env=env, stdout=out, stderr=err)
        status: int | None
        try:
            status = process.wait(timeout=time_limit)
            elapsed = time.monotonic() - started
        except subprocess.TimeoutExpired:
            status = None
            process.send_signal(signal.SIGINT)  # eventkeep import saves progress and exits 130
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            # Until it has exited: requests in flight at the limit may still have been stored.
            elapsed = time.monotonic() - started
    stored = server.count(secret)
    stdout = out_path.read_text(errors="replace").strip().splitlines()
    stderr = err_path.read_text(errors="replace").strip().splitlines()
    if stdout and stdout[-1].startswith("{"):
        report = stdout[-1]  # the contender's JSON summary (eventkeep import prints one when interrupted too)
    elif status is None:
        report = "stopped with SIGINT at the time limit"
    else:
        report = " | ".join(stderr[-3:]) or (stdout[-1] if stdout else "")
    for leftover in ("import_backup.txt", "invalid_events.txt"):
        if (cwd / leftover).exists():
            report += f" [{leftover} written]"
    return Outcome(name, status, elapsed, stored, report)


def summary_of(outcome: Outcome) -> str:
    """A short form of eventkeep import's --json summary (the whole JSON is long)."""
    try:
        data = json.loads(outcome.report)
    except ValueError:
        return outcome.report[:500]
    if not isinstance(data, dict):
        return outcome.report[:500]
    keys = [k for k in ("read", "sent", "imported", "rejected", "failed", "retries", "requests", "interrupted",
                        "problems_logged")
            if k in data]
    return ", ".join(f"{k} {data[k]}" for k in keys) or outcome.report[:500]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--duplicate-share", type=float, default=0.05, help="share of lines re-sending an earlier event")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds each contender may run (default 900)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated, run in this order (default {','.join(CONTENDERS)})")
    parser.add_argument("--concurrency", type=int, help="passed to `eventkeep import --concurrency` (default: its own)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds the server is left idle before each contender (default 3)")
    args = parser.parse_args()
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown or not names:
        parser.error(f"--contenders: choose from {', '.join(CONTENDERS)}")

    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="eventkeep-import-tool-bench-") as tmp:
        workdir = Path(tmp)
        path = workdir / "events.ndjson"
        started = time.monotonic()
        distinct = generate(path, args.events, args.duplicate_share)
        print(f"input: {args.events:,} lines ({distinct:,} distinct events), {path.stat().st_size / 1e6:.0f} MB NDJSON, "
              f"written in {time.monotonic() - started:.1f}s", flush=True)
        server = ServerProcess(workdir / "data")
        try:
            creds = create_projects(workdir / "data", names)
            for name in names:
                token, secret = creds[name]
                # The server's idle work for what came before (a checkpoint of the last
                # contender's writes, 0.5-2 s) is done now, not charged to this contender.
                time.sleep(args.settle)
                outcome = run_contender(name, server, token, secret, path, workdir, args.time_limit, args.concurrency)
                outcomes[name] = outcome
                state = f"exit {outcome.status}" if outcome.finished else f"STOPPED at the {args.time_limit:.0f}s limit"
                lines = f" ({args.events / outcome.elapsed:,.0f} lines/s of the file)" if outcome.finished else ""
                print(f"{name}: {state}, {outcome.elapsed:.1f}s, {outcome.stored:,} stored = "
                      f"{outcome.rate:,.0f} events/s{lines}", flush=True)
        finally:
            server.stop()

    print(f"machine: {machine()}")
    print(f"{'contender':<18}{'status':>10}{'wall s':>10}{'events/s':>12}{'stored':>12}  check")
    for o in outcomes.values():
        if o.finished:
            check = "exact" if o.stored == distinct else f"MISMATCH (expected {distinct:,})"
        else:
            check = f"partial ({o.stored / distinct:.0%} of {distinct:,})"
        status = str(o.status) if o.finished else "stopped"
        print(f"{o.name:<18}{status:>10}{o.elapsed:>10.1f}{o.rate:>12,.0f}{o.stored:>12,}  {check}")
        print(f"{'':<18}reported: {summary_of(o)}")
    tool = outcomes.get("eventkeep-import")
    if tool is not None:
        for other in ("mixpanel-utils", "sdk"):
            ref = outcomes.get(other)
            if ref is None or ref.rate == 0:
                continue
            caveat = "" if tool.finished and ref.finished else " (a stopped run: rate of what was stored)"
            target = f"; target >= 10x: {'met' if tool.rate >= 10 * ref.rate else 'NOT met'}" if other == "mixpanel-utils" else ""
            print(f"ratio eventkeep-import/{other} = {tool.rate / ref.rate:.1f}x{target}{caveat}")
    bad = [o.name for o in outcomes.values() if not o.finished or o.status != 0 or o.stored != distinct]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
