"""The lean plain-HTTP transport, against small servers on 127.0.0.1 that misbehave on
purpose, and against a real eventkeep server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from eventkeep.client.transport import LeanTransport, lean_transport_for
from tests.conftest import ProjectCreds, Server

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": 1}\r\n"


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        part = conn.recv(65536)
        if not part:
            return b""
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextmanager
def tcp_server(handle: Callable[[socket.socket, list[bytes]], None]) -> Iterator[tuple[str, list[bytes], list[int]]]:
    """A server on a free loopback port: `handle(conn, requests)` per connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    requests: list[bytes] = []
    connections: list[int] = []
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(1)
            threading.Thread(target=handle, args=(conn, requests), daemon=True).start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests, connections
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def answer_once_then_close(conn: socket.socket, requests: list[bytes]) -> None:
    """Keep-alive in name only: one answer, then the server closes the idle connection."""
    with conn:
        request = _read_request(conn)
        if request:
            requests.append(request)
            conn.sendall(ANSWER)


def never_answer(conn: socket.socket, requests: list[bytes]) -> None:
    _read_request(conn)
    threading.Event().wait(3)
    conn.close()


def drop_without_answer(conn: socket.socket, requests: list[bytes]) -> None:
    with conn:
        requests.append(_read_request(conn))


def test_plain_http_without_a_proxy_gets_the_lean_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(lean_transport_for("http://127.0.0.1:8000/import"), LeanTransport)
    assert lean_transport_for("https://api.mixpanel.com/import") is None
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert lean_transport_for("http://events.example/import") is None  # httpx handles proxies
    monkeypatch.setenv("no_proxy", "events.example")
    assert isinstance(lean_transport_for("http://events.example/import"), LeanTransport)


def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending() -> None:
    with tcp_server(answer_once_then_close) as (url, requests, connections), httpx.Client(
        transport=LeanTransport()
    ) as client:
        for i in range(3):
            response = client.post(url + f"/import?n={i}", content=b"x" * 100_000)
            assert response.status_code == 200 and response.json() == {"ok": 1}
            threading.Event().wait(0.05)  # the server's close arrives before the next request
    assert len(requests) == 3 and len(connections) == 3
    assert all(r.split(b"\r\n\r\n", 1)[1] == b"x" * 100_000 for r in requests)
    assert [r.split(b" ")[1] for r in requests] == [b"/import?n=0", b"/import?n=1", b"/import?n=2"]


def test_failures_are_httpx_errors_the_sender_retries() -> None:
    lean = httpx.Client(transport=LeanTransport(), timeout=0.3)
    with tcp_server(drop_without_answer) as (url, _, _), pytest.raises(httpx.RemoteProtocolError):
        lean.post(url + "/import", content=b"{}")
    with tcp_server(never_answer) as (url, _, _), pytest.raises(httpx.ReadTimeout):
        lean.post(url + "/import", content=b"{}")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with pytest.raises(httpx.ConnectError):
        lean.post(f"http://127.0.0.1:{port}/import", content=b"{}")
    lean.close()


def test_it_carries_a_real_import_and_keeps_its_connection(server: Server, project: ProjectCreds) -> None:
    body = b'{"event":"E","properties":{"time":1700000000,"distinct_id":"u","$insert_id":"lean1"}}'
    transport = LeanTransport()
    with httpx.Client(transport=transport, auth=(project.secret, "")) as client:
        answers = [client.post(server.url + "/import", params={"strict": "1"}, content=body) for _ in range(3)]
        assert [a.json() for a in answers] == [{"code": 200, "num_records_imported": 1, "status": "OK"}] * 3
        assert len(transport._all) == 1  # one kept-alive connection for the thread
