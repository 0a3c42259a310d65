"""Shared fixtures: a real eventkeep server process on 127.0.0.1, and fresh projects in it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventkeep.projects.sqlite import SQLiteRegistry

ROOT = Path(__file__).resolve().parent.parent


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

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def registry(self) -> SQLiteRegistry:
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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventkeep", "serve", "--data-dir", str(self.data_dir),
             "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
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


def start_server(tmp_path: Path, *extra_args: str, scheme: str = "http") -> Server:
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    server = Server(data_dir=data_dir, port=free_port(), scheme=scheme, extra_args=list(extra_args))
    server.start()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the whole session; each test takes its own project in it."""
    running = start_server(tmp_path_factory.mktemp("eventkeep"))
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
