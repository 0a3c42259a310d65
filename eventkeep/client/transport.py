"""How the import tool posts a batch: the standard library's `http.client` for plain HTTP,
httpx for the rest.

Why two: a batch is one POST of about 100 KB, repeated hundreds of thousands of times in
a backfill, and the tool shares the machine's cores with whatever it feeds.
`bench/post_overhead.py` (a server that answers at once; the posting thread's CPU per
request): 0.11 ms through `http.client`, 0.40 ms through an httpx client. So a plain
`http://` destination with no proxy configured for it gets `PlainPoster`: one keep-alive
connection per sending thread, nothing else.
HTTPS, proxies and tests' mock transports get `HttpxPoster`, imported only then.

Both answer with a `Reply` or raise `PostFailed`, named after httpx's exception for the same
failure, so the sender retries them alike: a refused connection is a ConnectError, a timeout
a ConnectTimeout or ReadTimeout, a connection lost mid-request a RemoteProtocolError or
ReadError. As in httpcore, a kept-alive connection the server closed while it was idle is
noticed before reuse and replaced.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # names lower-cased
    content: bytes
    reason: str


class PostFailed(Exception):
    """No answer came: `kind` is the name httpx gives this failure (see above)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Poster(Protocol):
    def post(self, body: bytes) -> Reply: ...

    def close(self) -> None: ...


def poster_for(
    url: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    *,
    timeout: float,
    connect_timeout: float,
    connections: int,
    transport: Any = None,
) -> Poster:
    """`PlainPoster` if `url` is plain HTTP with no proxy for it and no transport is given,
    else `HttpxPoster`."""
    parts = urlsplit(url)
    if transport is None and parts.scheme == "http" and parts.hostname and not _proxied(parts.hostname):
        return PlainPoster(url, params, headers, timeout=timeout, connect_timeout=connect_timeout)
    return HttpxPoster(
        url, params, headers, timeout=timeout, connect_timeout=connect_timeout, connections=connections,
        transport=transport,
    )


def _proxied(hostname: str) -> bool:
    proxies = urllib.request.getproxies_environment()
    return ("http" in proxies or "all" in proxies) and not urllib.request.proxy_bypass(hostname)


class PlainPoster:
    """POSTs to one plain-HTTP URL over `http.client`, a kept-alive connection per thread."""

    def __init__(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str], *, timeout: float,
        connect_timeout: float,
    ) -> None:
        parts = urlsplit(url)
        assert parts.hostname is not None
        self._address = (parts.hostname, parts.port or 80)
        query = "&".join(q for q in (parts.query, urlencode(params)) if q)
        self._target = (parts.path or "/") + (f"?{query}" if query else "")
        self._headers = dict(headers)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def post(self, body: bytes) -> Reply:
        conn = self._connection()
        try:
            conn.request("POST", self._target, body=body, headers=self._headers)
            response = conn.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connected = conn.sock is not None
            self._discard()
            raise _failure(exc, connected) from exc
        if response.will_close:
            self._discard()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, content, response.reason)

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and not _closed_by_peer(conn):
            return conn
        self._discard()
        conn = _TimedConnection(*self._address, self._connect_timeout, self._timeout)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn

    def _discard(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._all)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class HttpxPoster:
    """POSTs through an httpx client: HTTPS, proxies (from the environment) and the rest."""

    def __init__(
        self, url: str, params: Mapping[str, str], headers: Mapping[str, str], *, timeout: float,
        connect_timeout: float, connections: int, transport: Any = None,
    ) -> None:
        import httpx

        self._httpx = httpx
        self._url = url
        self._params = dict(params)
        self._headers = dict(headers)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            transport=transport,
            follow_redirects=False,
        )

    def post(self, body: bytes) -> Reply:
        try:
            response = self._client.post(self._url, params=self._params, headers=self._headers, content=body)
        except self._httpx.TransportError as exc:
            raise PostFailed(type(exc).__name__, str(exc)) from exc
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Reply(response.status_code, headers, response.content, response.reason_phrase)

    def close(self) -> None:
        self._client.close()


def _failure(exc: Exception, connected: bool) -> PostFailed:
    """The PostFailed for a failure of `http.client` (see the module's docstring)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return PostFailed("ReadTimeout" if connected else "ConnectTimeout", message)
    if isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
        return PostFailed("RemoteProtocolError", message)
    if isinstance(exc, ConnectionRefusedError) or not connected:
        return PostFailed("ConnectError", message)
    return PostFailed("ReadError", message)


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """Whether a kept-alive connection was closed by the server while idle (readable with
    nothing asked: end of file, or an unsolicited answer), as httpcore checks before reuse:
    such a connection is replaced before sending rather than failing the request."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _TimedConnection(http.client.HTTPConnection):
    """Connects within the connect timeout, then reads and writes within the read one."""

    def __init__(self, host: str, port: int, connect: float | None, read: float | None) -> None:
        super().__init__(host, port, timeout=connect)
        self._read_timeout = read

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock.settimeout(self._read_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
