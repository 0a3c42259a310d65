"""A fault-injecting HTTP proxy on 127.0.0.1, in front of a real eventkeep server.

For a chosen share of requests it answers 429 (with or without `Retry-After`) or 503
itself, or drops the connection before or after forwarding (after: the server stored the
batch but the client never hears so). Export responses can also be cut mid-line or end with
`export terminated early`. Every decision is counted, so a test can compare the client's
own retry counts with what was injected, and every request's arrival is logged, so a test
can check that no request arrived while a `Retry-After` said to wait.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

IMPORT_FAULTS = ("429_retry_after", "429", "503", "drop_before", "drop_after")
EXPORT_FAULTS = ("429", "503", "drop_before", "truncate", "terminated")

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "accept-encoding"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    arrived: float
    fault: str | None


@dataclass
class FaultPlan:
    """Which requests to fault. `decide(request)` may be replaced for targeted faults."""

    rate: float = 0.0
    import_faults: tuple[str, ...] = IMPORT_FAULTS
    export_faults: tuple[str, ...] = EXPORT_FAULTS
    retry_after: int = 1
    seed: int = 1234
    decide: Callable[[Request], str | None] | None = None
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def choose(self, request: Request) -> str | None:
        if self.decide is not None:
            return self.decide(request)
        if self._rng.random() >= self.rate:
            return None
        kinds = self.export_faults if request.path.startswith("/api/2.0/export") else self.import_faults
        return self._rng.choice(kinds)


class FaultProxy:
    def __init__(self, upstream: str, plan: FaultPlan | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan or FaultPlan()
        self.faults: Counter[str] = Counter()
        self.requests: list[Request] = []
        self.early: list[float] = []  # arrivals inside a Retry-After wait window
        self._lock = threading.Lock()
        self._quiet_windows: list[tuple[float, float]] = []
        self._client = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def count(self, method: str | None = None, path_prefix: str = "") -> int:
        with self._lock:
            return sum(
                1 for r in self.requests if (method is None or r.method == method) and r.path.startswith(path_prefix)
            )

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        request = Request(handler.command, parts.path, parse_qs(parts.query), arrived, None)
        with self._lock:
            fault = self.plan.choose(request)
            request.fault = fault
            self.requests.append(request)
            if any(start <= arrived <= end for start, end in self._quiet_windows):
                self.early.append(arrived)
            if fault:
                self.faults[fault] += 1
        if fault == "drop_before":
            return self._drop(handler)
        if fault in ("429", "429_retry_after", "503"):
            status = 503 if fault == "503" else 429
            headers = {}
            if fault == "429_retry_after":
                headers["Retry-After"] = str(self.plan.retry_after)
                with self._lock:
                    # Generous margins: requests already on the wire may still arrive just after.
                    self._quiet_windows.append((arrived + 0.25, arrived + self.plan.retry_after - 0.1))
            message = b'{"code":%d,"error":"injected fault","status":"Too Many Requests"}' % status
            return self._send(handler, status, message, headers)
        forward_headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            upstream = self._client.request(
                handler.command, self.upstream + handler.path, content=body, headers=forward_headers
            )
        except httpx.HTTPError:
            return self._drop(handler)
        if fault == "drop_after":
            return self._drop(handler)
        data = upstream.content
        if fault == "truncate" and data:
            # Cut the body in the middle of its last line.
            last_start = data.rstrip(b"\n").rfind(b"\n") + 1
            data = data[: last_start + max(1, (len(data) - last_start) // 2)]
        elif fault == "terminated":
            data = data + b"export terminated early\n"
        headers = {"Content-Type": upstream.headers.get("content-type", "application/json")}
        if "retry-after" in upstream.headers:
            headers["Retry-After"] = upstream.headers["retry-after"]
        self._send(handler, upstream.status_code, data, headers)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    @staticmethod
    def _drop(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)
