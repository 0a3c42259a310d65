"""What posting one batch costs the import tool's sending thread, by transport.

A server on 127.0.0.1, in its own process, reads each request and answers at once with a
fixed /import answer, so that nothing is measured but the client: the CPU time of the
posting thread (`time.thread_time`) per request, for the same gzip body of 2000 realistic
events, through `PlainPoster` (`http.client`, what `eventkeep import` uses for plain HTTP)
and through `HttpxPoster` (an httpx client, what it uses for HTTPS and proxies; here over
plain HTTP, so that the two differ only in the client). Reference: the httpx poster in the
same run.

    python bench/post_overhead.py --requests 2000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
from isal import igzip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, realistic_events
from eventkeep.client.transport import HttpxPoster, PlainPoster, Poster

ANSWERING_SERVER = r"""
import socket, sys, threading
ANSWER = b'{"code":200,"num_records_imported":2000,"status":"OK"}'
REPLY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
         + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER)

def serve(conn):
    data = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in data:
                part = conn.recv(1 << 20)
                if not part:
                    return
                data += part
            head, _, data = data.partition(b"\r\n\r\n")
            length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
            while len(data) < length:
                part = conn.recv(1 << 20)
                if not part:
                    return
                data += part
            data = data[length:]
            conn.sendall(REPLY)

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def cpu_per_request(poster: Poster, body: bytes, requests: int, time_limit: float) -> float:
    """Seconds of this thread's CPU per request, after a few requests of warm-up."""
    for _ in range(20):
        assert poster.post(body).status == 200
    started, deadline = time.thread_time(), time.monotonic() + time_limit
    done = 0
    while done < requests and time.monotonic() < deadline:
        assert poster.post(body).status == 200
        done += 1
    return (time.thread_time() - started) / max(done, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per poster (default 2000)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per poster at most (default 60)")
    args = parser.parse_args()

    text = b"\n".join(orjson.dumps(event) for event in realistic_events(2000))
    body = igzip.compress(text, compresslevel=1)
    server = subprocess.Popen([sys.executable, "-c", ANSWERING_SERVER], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/import"
        headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
        posters: dict[str, Poster] = {
            "http.client (PlainPoster)": PlainPoster(url, {"strict": "1"}, headers, timeout=30, connect_timeout=5),
            "httpx (HttpxPoster)": HttpxPoster(url, {"strict": "1"}, headers, timeout=30, connect_timeout=5,
                                               connections=1, transport=httpx.HTTPTransport()),
        }
        print(f"body: 2000 events, {len(text):,} bytes, {len(body):,} gzipped; {args.requests} requests per poster")
        costs = {}
        for name, poster in posters.items():
            costs[name] = cpu_per_request(poster, body, args.requests, args.time_limit)
            poster.close()
            print(f"{name}: {costs[name] * 1000:.3f} ms of CPU per request")
    finally:
        server.kill()
        server.wait()
    plain, reference = costs["http.client (PlainPoster)"], costs["httpx (HttpxPoster)"]
    print(f"machine: {machine()}")
    print(f"ratio PlainPoster/HttpxPoster CPU per request = {plain / reference:.2f}")


if __name__ == "__main__":
    main()
