"""A lean httpx transport for plain-HTTP imports: the standard library's `http.client`,
one keep-alive connection per sending thread.

Why: httpx's default transport (httpcore and h11, pure Python) spent about 1.6 ms of CPU
on each 100 KB request to a local server, a quarter of `eventkeep import`'s time at
150,000 events/s; `http.client` sends the same request for about a tenth of that
(bench/RESULTS.md, Session 9). The sender keeps httpx's API, so its retries, tests and
HTTPS (with httpx's own transport) are unchanged.

Only for `http://` destinations with no proxy configured for them; see `lean_transport_for`.
Failures are raised as httpx's own exceptions, so the sender treats them exactly as it
treats httpx's: a refused connection is a ConnectError, a timeout a TimeoutException, a
connection lost mid-request a RemoteProtocolError or ReadError. As in httpcore, a kept-alive
connection the server closed while it was idle is noticed before reuse and replaced.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

import httpx

# Headers http.client writes itself from the request (Host) or the body (Content-Length).
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


def lean_transport_for(url: str) -> httpx.BaseTransport | None:
    """The lean transport if `url` is plain HTTP and no proxy applies to it, else None
    (httpx's default, which handles HTTPS, proxies and the rest)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None
    proxies = urllib.request.getproxies_environment()
    if ("http" in proxies or "all" in proxies) and not urllib.request.proxy_bypass(parts.hostname):
        return None
    return LeanTransport()


class LeanTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        target = url.raw_path.decode("ascii")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _OWN_HEADERS}
        body = request.read()
        key = (url.host, url.port or 80)
        conn = self._connection(key, timeouts)
        try:
            conn.request(request.method, target, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connected = conn.sock is not None
            self._discard()
            raise _as_httpx_error(exc, connected, request) from exc
        if response.will_close:
            self._discard()
        return httpx.Response(
            response.status,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.getheaders()],
            content=content,
            request=request,
        )

    def _connection(self, key: tuple[str, int], timeouts: dict[str, float | None]) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.key == key and not _closed_by_peer(conn):
            return conn
        return self._fresh(key, timeouts)

    def _fresh(self, key: tuple[str, int], timeouts: dict[str, float | None]) -> http.client.HTTPConnection:
        self._discard()
        host, port = key
        conn = _TimedConnection(host, port, timeouts.get("connect"), timeouts.get("read"))
        self._local.conn, self._local.key = conn, key
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

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _as_httpx_error(exc: Exception, connected: bool, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception for a failure of `http.client` (see the module's docstring)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return (httpx.ReadTimeout if connected else httpx.ConnectTimeout)(message, request=request)
    if isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, ConnectionRefusedError) or not connected:
        return httpx.ConnectError(message, request=request)
    return httpx.ReadError(message, request=request)


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
