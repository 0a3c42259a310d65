"""Read a request body within Mixpanel's limits.

The 10 MB limit applies to the uncompressed body; a compressed body larger than that is
refused as it streams in. Inflating is eventkeep.ingest.compression's job: for events it
happens where the events are checked (possibly a worker process), so the event loop only
moves the compressed bytes.
"""

from __future__ import annotations

from starlette.requests import Request

from eventkeep.errors import request_too_large
from eventkeep.ingest.compression import check_encoding, inflate
from eventkeep.ingest.limits import MAX_REQUEST_BYTES


def content_encoding(request: Request) -> str:
    return request.headers.get("content-encoding", "").strip().lower()


async def read_raw_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The body as sent (still compressed), or an ApiError: 415 for an encoding that cannot
    be inflated, 413 when even the bytes sent exceed the uncompressed limit."""
    check_encoding(content_encoding(request))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise request_too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise request_too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The body, decompressed, or an ApiError (413 over the limit, 400 if it is corrupt)."""
    return inflate(await read_raw_body(request, limit), content_encoding(request), limit)
