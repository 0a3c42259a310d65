"""Memory benchmark for `eventkeep import`: peak RSS while importing a 2 GB input.

Generates realistic NDJSON events straight to a temporary file (never in memory), starts an
eventkeep server, runs `eventkeep import` on the file as a separate process, samples that
process's peak resident set (`VmHWM` in /proc) while it runs, and prints it. The claim
under test: the tool's memory does not grow with the input (target: under 200 MB).

    python bench/import_memory.py                 # 2 GB of NDJSON
    python bench/import_memory.py --size-gb 0.2 --gzip --verify
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, ServerProcess, machine, proc_memory_mb, realistic_events


def generate(path: Path, size_bytes: int, compress: bool) -> int:
    """Write events until the uncompressed size reaches `size_bytes`; return the count."""
    if compress:
        from isal import igzip_threaded

        out = igzip_threaded.open(path, "wb", compresslevel=1, threads=1)
    else:
        out = open(path, "wb")  # noqa: SIM115 - closed below
    written = 0
    count = 0
    block: list[bytes] = []
    with out:
        # Unbounded stream of events; ids stay unique because the index is part of them.
        for event in realistic_events(10**12, start_s=int(time.time()) - 40 * 86400):
            line = orjson.dumps(event)
            block.append(line)
            written += len(line) + 1
            count += 1
            if len(block) >= 20_000:
                out.write(b"\n".join(block) + b"\n")
                block.clear()
                if written >= size_bytes:
                    break
        if block:
            out.write(b"\n".join(block) + b"\n")
    return count


# `eventkeep import` exactly as the command runs it, plus one thing: on exit it writes its own
# VmHWM (peak RSS) to a file, so the figure includes the very end of the run. (ru_maxrss of a
# child is no good here: it counts the forked copy of this process before exec.)
LAUNCHER = """
import atexit, sys
from eventkeep.cli import main
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(sys.argv[1], "w").write(line.split()[1])
atexit.register(_peak)
sys.exit(main(sys.argv[2:]))
"""


def run_import(url: str, secret: str, path: Path, concurrency: int, workdir: Path) -> tuple[int, float, float, float]:
    """Run the tool; return (exit status, seconds, VmHWM sampled while running, VmHWM at exit) in MB."""
    peak_file = workdir / "vmhwm.kb"
    command = [sys.executable, "-c", LAUNCHER, str(peak_file), "import", str(path), "--host", url, "--secret", secret,
               "--concurrency", str(concurrency), "--progress", "lines", "--progress-interval", "15"]
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache")}
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    sampled = 0.0
    while process.poll() is None:
        try:
            sampled = max(sampled, proc_memory_mb(process.pid, "VmHWM"))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.1)
    status = process.wait()
    elapsed = time.monotonic() - started
    at_exit = int(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")
    return status, elapsed, sampled, at_exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0, help="uncompressed input size (default 2)")
    parser.add_argument("--gzip", action="store_true", help="write the input gzip-compressed")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--verify", action="store_true", help="count the stored events through the export API")
    parser.add_argument("--limit-mb", type=float, default=200.0, help="fail (exit 1) above this peak")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="eventkeep-import-bench-") as tmp:
        workdir = Path(tmp)
        path = workdir / ("input.ndjson.gz" if args.gzip else "input.ndjson")
        started = time.monotonic()
        count = generate(path, int(args.size_gb * 1e9), args.gzip)
        print(f"input: {count:,} events, {path.stat().st_size / 1e9:.2f} GB on disk "
              f"({'gzip' if args.gzip else 'plain'}), generated in {time.monotonic() - started:.0f}s", flush=True)
        server = ServerProcess(workdir / "data", "--log-level", "warning")
        try:
            secret = server.secret()
            status, elapsed, sampled, hwm = run_import(server.url, secret, path, args.concurrency, workdir)
            stored = server.count(secret) if args.verify else None
        finally:
            server.stop()
    print(f"machine: {machine()}")
    print(f"import: exit {status}, {count:,} events in {elapsed:.0f}s = {count / elapsed:,.0f} events/s")
    print(f"tool peak RSS (VmHWM): {hwm:.0f} MB at exit ({sampled:.0f} MB sampled while running); "
          f"limit {args.limit_mb:.0f} MB")
    if stored is not None:
        print(f"stored: {stored:,} of {count:,} sent ({'exact' if stored <= count else 'MORE THAN SENT'}; "
              "the generator repeats no ids)")
    sys.exit(0 if status == 0 and max(hwm, sampled) < args.limit_mb else 1)


if __name__ == "__main__":
    main()
