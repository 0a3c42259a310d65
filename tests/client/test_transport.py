"""How the import tool posts: `http.client` for plain HTTP, httpx for the rest, against
small servers on 127.0.0.1 that misbehave on purpose, and against a real eventkeep server."""

from __future__ import annotations

import base64
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest

from eventkeep.client.transport import HttpxPoster, PlainPoster, Poster, PostFailed, poster_for
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


def plain(url: str, params: dict[str, str] | None = None, timeout: float = 5.0) -> PlainPoster:
    return PlainPoster(url, params or {}, {"X-Test": "1"}, timeout=timeout, connect_timeout=timeout)


def both(url: str, timeout: float) -> list[Poster]:
    """The plain poster and the httpx one (forced by a transport), for the same URL."""
    return [plain(url, timeout=timeout),
            HttpxPoster(url, {}, {}, timeout=timeout, connect_timeout=timeout, connections=1,
                        transport=httpx.HTTPTransport())]


def test_plain_http_without_a_proxy_gets_the_plain_poster(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def chosen(url: str, transport: object = None) -> type:
        poster = poster_for(url, {}, {}, timeout=1, connect_timeout=1, connections=1, transport=transport)
        poster.close()
        return type(poster)

    assert chosen("http://127.0.0.1:8000/import") is PlainPoster
    assert chosen("https://api.mixpanel.com/import") is HttpxPoster
    assert chosen("http://127.0.0.1:8000/import", httpx.MockTransport(lambda r: httpx.Response(200))) is HttpxPoster
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert chosen("http://events.example/import") is HttpxPoster  # httpx handles proxies
    monkeypatch.setenv("no_proxy", "events.example")
    assert chosen("http://events.example/import") is PlainPoster


def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending() -> None:
    with tcp_server(answer_once_then_close) as (url, requests, connections):
        poster = plain(url + "/import?n=1", {"strict": "1"})
        for _ in range(3):
            reply = poster.post(b"x" * 100_000)
            assert (reply.status, reply.content, reply.headers["content-type"]) == (200, b'{"ok": 1}\r\n', "application/json")
            threading.Event().wait(0.05)  # the server's close arrives before the next request
        poster.close()
    assert len(requests) == 3 and len(connections) == 3
    assert all(r.split(b"\r\n\r\n", 1)[1] == b"x" * 100_000 for r in requests)
    assert [r.split(b" ")[:2] for r in requests] == [[b"POST", b"/import?n=1&strict=1"]] * 3
    assert all(b"\r\nX-Test: 1\r\n" in r for r in requests)


def test_failures_are_named_as_httpx_names_them_on_both_paths() -> None:
    """The sender retries on PostFailed and reports its kind: the two posters must agree."""
    with tcp_server(drop_without_answer) as (url, _, _):
        for poster in both(url + "/import", 0.3):
            with pytest.raises(PostFailed) as failed:
                poster.post(b"{}")
            assert failed.value.kind == "RemoteProtocolError", type(poster)
    with tcp_server(never_answer) as (url, _, _):
        for poster in both(url + "/import", 0.3):
            with pytest.raises(PostFailed) as failed:
                poster.post(b"{}")
            assert failed.value.kind == "ReadTimeout", type(poster)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    for poster in both(f"http://127.0.0.1:{port}/import", 0.3):
        with pytest.raises(PostFailed) as failed:
            poster.post(b"{}")
        assert failed.value.kind == "ConnectError", type(poster)


def test_it_carries_a_real_import_and_keeps_its_connection(server: Server, project: ProjectCreds) -> None:
    body = b'{"event":"E","properties":{"time":1700000000,"distinct_id":"u","$insert_id":"lean1"}}'
    auth = "Basic " + base64.b64encode(f"{project.secret}:".encode()).decode()
    poster = PlainPoster(server.url + "/import", {"strict": "1"}, {"Authorization": auth}, timeout=10, connect_timeout=10)
    try:
        replies = [poster.post(body) for _ in range(3)]
        assert [(r.status, r.content) for r in replies] == [
            (200, b'{"code":200,"num_records_imported":1,"status":"OK"}')
        ] * 3
        assert poster.open_connections == 1  # one kept-alive connection for the thread
    finally:
        poster.close()
