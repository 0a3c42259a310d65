"""Shared fixtures: a real eventkeep server process on 127.0.0.1, and fresh projects in it.

The HTTP-level suites (tests/http, tests/clients, and the tests of tests/test_cli.py that
start a server) run once per store kind: `store_kind` is "duckdb" or "clickhouse", and the
session `server` fixture and `start_server` follow it. ClickHouse runs as a two-shard cluster
of real `clickhouse-server` processes (tests/clickhouse_fixture.py), started on first use;
each server gets a database of its own. Without clickhouse-server installed those variants
are skipped.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventkeep.projects.registry import ProjectRegistry
from eventkeep.projects.sqlite import SQLiteRegistry
from tests import clickhouse_fixture

ROOT = Path(__file__).resolve().parent.parent
STORE_KINDS = ("duckdb", "clickhouse")
# Suites whose tests run on every store kind (when they start a server).
SERVER_SUITES = ("http", "clients", "test_cli.py")
# Tests there of behaviour only the embedded store has, with the reason.
DUCKDB_ONLY = {
    "test_export_through_the_running_server": "only DuckDB locks its file: ClickHouse exports need no server",
}

_current_kind = "duckdb"  # the store kind of the test being run: start_server's default
_in_test = False  # between a test's env snapshot and its restore: start_server may set env
_clickhouse: clickhouse_fixture.ClickHouseCluster | None = None
_clickhouse_root: Path | None = None


def clickhouse_cluster() -> clickhouse_fixture.ClickHouseCluster:
    """The session's two-shard ClickHouse cluster, started on first use."""
    global _clickhouse, _clickhouse_root
    if _clickhouse is None:
        if not clickhouse_fixture.available():
            _missing_clickhouse()
        _clickhouse_root = Path(tempfile.mkdtemp(prefix="eventkeep-clickhouse-"))
        _clickhouse = clickhouse_fixture.start_cluster(_clickhouse_root, shards=2)
        atexit.register(_stop_clickhouse)
    return _clickhouse


def _stop_clickhouse() -> None:
    global _clickhouse, _clickhouse_root
    if _clickhouse is not None:
        _clickhouse.stop()
        _clickhouse = None
    if _clickhouse_root is not None:
        shutil.rmtree(_clickhouse_root, ignore_errors=True)
        _clickhouse_root = None


def _missing_clickhouse() -> None:
    """Skip ClickHouse variants on a developer machine without it; in CI, fail instead."""
    message = "clickhouse-server is not installed (apt-get install clickhouse-server)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def new_clickhouse_store() -> str:
    """A store URL for a fresh database on the session cluster, sharded over both nodes."""
    return clickhouse_cluster().store_url(f"ek_{uuid.uuid4().hex[:12]}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _stop_clickhouse()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the server-level tests of SERVER_SUITES on every store kind."""
    if "store_kind" not in metafunc.fixturenames:
        return
    try:
        relative = Path(metafunc.definition.path).resolve().relative_to(ROOT / "tests")
    except ValueError:
        return
    if relative.parts[0] not in SERVER_SUITES:
        return
    if metafunc.function.__name__ in DUCKDB_ONLY:
        return
    if "server" in metafunc.fixturenames or _calls_start_server(metafunc):
        metafunc.parametrize("store_kind", STORE_KINDS, indirect=True, scope="session")


def _calls_start_server(metafunc: pytest.Metafunc) -> bool:
    """Whether the test, or a function-scoped fixture it uses, starts a server of its own.

    (A module-scoped fixture would start its server once, for the first store kind only.)
    """
    functions: list[Any] = [metafunc.function]
    for name in metafunc.fixturenames:
        definitions = metafunc._arg2fixturedefs.get(name) or ()
        functions.extend(d.func for d in definitions if d.scope == "function")
    for function in functions:
        try:
            if "start_server(" in inspect.getsource(function):
                return True
        except (OSError, TypeError):
            continue
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of the test runs, so module fixtures calling start_server see it."""
    global _current_kind
    callspec = getattr(item, "callspec", None)
    _current_kind = callspec.params.get("store_kind", "duckdb") if callspec is not None else "duckdb"


@pytest.fixture(scope="session")
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store behind `server` and `start_server`; "duckdb" unless parametrised."""
    kind: str = getattr(request, "param", "duckdb")
    if kind == "clickhouse" and not clickhouse_fixture.available():
        _missing_clickhouse()
    return kind


@pytest.fixture(autouse=True)
def _store_for_commands(
    store_kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """`eventkeep` commands a ClickHouse test runs (with --data-dir) reach its server's store:
    EVENTKEEP_STORE names the session server's, or the last one `start_server` started."""
    global _in_test
    monkeypatch.delenv("EVENTKEEP_STORE", raising=False)  # restored after the test
    if store_kind == "clickhouse" and "server" in request.fixturenames:
        running: Server = request.getfixturevalue("server")
        if running.store:
            monkeypatch.setenv("EVENTKEEP_STORE", running.store)
    _in_test = True
    yield
    _in_test = False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ProjectCreds:
    id: int
    token: str
    secret: str
    name: str = ""


@dataclass
class Server:
    """A running `eventkeep serve` process and the data directory it owns."""

    data_dir: Path
    port: int
    scheme: str = "http"
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    store: str | None = None  # a clickhouse:// URL; None: DuckDB in data_dir

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def registry(self) -> ProjectRegistry:
        if self.store:
            from eventkeep.projects.clickhouse import ClickHouseRegistry
            from eventkeep.store.clickhouse_schema import ClickHouseTarget

            return ClickHouseRegistry(ClickHouseTarget.parse(self.store))
        return SQLiteRegistry(self.data_dir / "projects.sqlite3")

    def new_project(self, name: str | None = None, time_zone: str = "UTC") -> ProjectCreds:
        registry = self.registry()
        project = registry.create_project(name or f"test-{uuid.uuid4().hex[:8]}", time_zone=time_zone)
        registry.close()
        return ProjectCreds(project.id, project.token, project.secret, project.name)

    def new_service_account(self, project: ProjectCreds) -> tuple[str, str]:
        registry = self.registry()
        try:
            return registry.create_service_account(project.id, "test")
        finally:
            registry.close()

    def start(self, timeout: float = 30.0) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        store = ["--store", self.store] if self.store else []
        env = {k: v for k, v in os.environ.items() if k != "EVENTKEEP_STORE"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventkeep", "serve", "--data-dir", str(self.data_dir),
             *store, "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1.0, verify=False).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def export(self, project: ProjectCreds, **params: Any) -> list[dict[str, Any]]:
        """Every stored event of a project, through the export API."""
        query = {"from_date": "1971-01-01", "to_date": "2100-01-01", **params}
        response = httpx.get(
            f"{self.url}/api/2.0/export", params=query, auth=(project.secret, ""), timeout=60, verify=False
        )
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line]


def start_server(
    tmp_path: Path, *extra_args: str, scheme: str = "http", kind: str | None = None
) -> Server:
    """A fresh server of the running test's store kind (a new database on ClickHouse)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    store = new_clickhouse_store() if (kind or _current_kind) == "clickhouse" else None
    server = Server(data_dir=data_dir, port=free_port(), scheme=scheme, extra_args=list(extra_args), store=store)
    server.start()
    if store is not None and _in_test:
        os.environ["EVENTKEEP_STORE"] = store  # for commands the test runs; undone after it
    return server


@pytest.fixture(scope="session")
def server(store_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per store kind for the whole session; each test takes its own project in it."""
    running = start_server(tmp_path_factory.mktemp(f"eventkeep-{store_kind}"), kind=store_kind)
    yield running
    running.stop()


@pytest.fixture
def project(server: Server) -> ProjectCreds:
    return server.new_project()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def event(name: str = "Signed up", **properties: Any) -> dict[str, Any]:
    """A valid /import event; keyword arguments override or add properties."""
    props: dict[str, Any] = {
        "time": int(time.time()) - 3600,
        "distinct_id": "user-1",
        "$insert_id": uuid.uuid4().hex,
    }
    props.update(properties)
    return {"event": name, "properties": props}


def gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of `[`, `inflated` spaces and `]`, built without ever holding it inflated.

    One 1 MiB block of spaces is deflated once and repeated: after a full flush deflate keeps
    no history, so identical input gives identical, independently decodable bytes. Deflate
    cannot do better than about 1:1032, so a gigabyte needs about 1 MB of gzip.
    """
    block = 1024 * 1024
    assert inflated % block == 0
    spaces = b" " * block
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(b"[") + deflate.flush(zlib.Z_FULL_FLUSH)
    piece = deflate.compress(spaces) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(b"]") + deflate.flush()
    count = inflated // block
    crc = zlib.crc32(b"[")
    for _ in range(count):
        crc = zlib.crc32(spaces, crc)
    crc = zlib.crc32(b"]", crc)
    size = (inflated + 2) & 0xFFFFFFFF
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no flags, unknown OS
    return header + head + piece * count + tail + struct.pack("<II", crc, size)
