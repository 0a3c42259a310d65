"""What the benchmarks share: realistic events, a server process, and peak-RSS readings."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
EVENT_NAMES = ["Page Viewed", "Signed Up", "Added to Cart", "Purchased", "Searched", "Shared", "Logged In"]
PLANS = ["free", "pro", "team", "enterprise"]
COUNTRIES = ["US", "DE", "FR", "IN", "BR", "JP", "GB"]


def realistic_events(count: int, *, seed: int = 7, start_s: int = 1_700_000_000, span_s: int = 30 * 86400,
                     duplicate_share: float = 0.0) -> Iterator[dict[str, Any]]:
    """Events with ten properties of mixed types, like a product-analytics stream."""
    rng = random.Random(seed)
    recent: list[dict[str, Any]] = []
    for i in range(count):
        if recent and rng.random() < duplicate_share:
            yield rng.choice(recent)
            continue
        event = {
            "event": EVENT_NAMES[i % len(EVENT_NAMES)],
            "properties": {
                "time": start_s + rng.randrange(span_s),
                "distinct_id": f"user-{rng.randrange(200_000)}",
                "$insert_id": f"{seed:x}-{i:x}-{rng.getrandbits(48):x}",
                "plan": PLANS[i % len(PLANS)],
                "price": round(rng.random() * 200, 2),
                "quantity": rng.randrange(1, 10),
                "is_trial": rng.random() < 0.3,
                "country": COUNTRIES[i % len(COUNTRIES)],
                "$browser": "Chrome" if i % 3 else "Firefox",
                "$current_url": f"https://shop.example/p/{rng.randrange(5000)}",
                "tags": ["a", "b"] if i % 2 else [],
                "referrer": None if i % 5 else "https://news.example/",
                "cart": {"items": rng.randrange(5), "currency": "EUR"},
            },
        }
        if len(recent) < 10_000:
            recent.append(event)
        yield event


def store_events(store: Any, project_id: int, events: Iterable[dict[str, Any]]) -> None:
    """Validate and store events straight into a store, 2000 at a time, as the server would."""
    from eventkeep.ingest.validate import IngestContext, validate_events

    ctx = IngestContext("import", int(time.time() * 1000), "bench")
    batch: list[dict[str, Any]] = []
    for event in events:
        batch.append(event)
        if len(batch) == 2000:
            store.append_sync(project_id, validate_events(batch, ctx))
            batch = []
    if batch:
        store.append_sync(project_id, validate_events(batch, ctx))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`eventkeep serve` on loopback, with its peak RSS readable from /proc."""

    def __init__(self, data_dir: Path | None, *extra: str) -> None:
        """`data_dir` None: the store comes from `extra` (e.g. `--store clickhouse://…`)."""
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        store_args = ["--data-dir", str(data_dir)] if data_dir is not None else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventkeep", "serve", *store_args, "--port", str(self.port),
             "--log-level", "warning", *extra],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/healthz", timeout=1).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start")

    def secret(self) -> str:
        """The API secret of the project the server created on its first start."""
        from eventkeep.projects.sqlite import SQLiteRegistry

        assert self.data_dir is not None, "secret() reads the embedded store's registry"
        registry = SQLiteRegistry(self.data_dir / "projects.sqlite3")
        try:
            return registry.list_projects()[0].secret
        finally:
            registry.close()

    def count(self, secret: str) -> int:
        """Stored events of that project, counted through the export API."""
        lines = 0
        params = {"from_date": "1971-01-01", "to_date": "2100-01-01"}
        with httpx.stream("GET", self.url + "/api/2.0/export", params=params, auth=(secret, ""), timeout=600) as r:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                lines += chunk.count(b"\n")
        return lines

    def wait_applied(self, secret: str) -> None:
        """Return once every acknowledged event is queryable: an export of an empty date range
        still waits for the store to apply what it has acknowledged."""
        params = {"from_date": "1971-01-01", "to_date": "1971-01-01"}
        httpx.get(self.url + "/api/2.0/export", params=params, auth=(secret, ""), timeout=600).raise_for_status()

    def rss_mb(self, field: str = "VmRSS") -> float:
        return proc_memory_mb(self.process.pid, field)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def proc_memory_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_self_mb() -> float:
    return proc_memory_mb(os.getpid())


def machine() -> str:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB, Python {sys.version.split()[0]}"
