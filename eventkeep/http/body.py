"""Read a request body within Mixpanel's limits, inflating gzip as it streams in.

The 10 MB limit applies to the uncompressed body. Decompression is bounded chunk by chunk,
so a gzip bomb (a kilobyte that inflates to a gigabyte) is refused after inflating just
over the limit, never held whole in memory.
"""

from __future__ import annotations

import zlib
from typing import cast

from isal import isal_zlib
from isal.igzip_lib import IsalError
from starlette.requests import Request

from eventkeep.errors import ApiError, bad_request, request_too_large
from eventkeep.ingest.limits import MAX_REQUEST_BYTES

_OUT_CHUNK = 1024 * 1024
# isal's type stubs do not declare IsalError an exception class.
_INFLATE_ERRORS = cast(tuple[type[Exception], ...], (IsalError, zlib.error))


_NOT_GZIP = "request body is not valid gzip"
_TRUNCATED = "request body is not valid gzip: the compressed stream is truncated"


class _Inflater:
    def __init__(self, encoding: str, limit: int) -> None:
        # wbits 16+15: gzip container; 15: zlib container ("deflate" as browsers send it).
        self._wbits = 31 if encoding in ("gzip", "x-gzip") else 15
        self._obj = isal_zlib.decompressobj(self._wbits)
        self._limit = limit
        self._size = 0
        self._fed = False
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> None:
        while data:
            self._fed = True
            obj = self._obj
            if obj.eof:
                # Bytes after the end of a stream. Concatenated gzip members are one valid
                # gzip file (RFC 1952 §2.2): inflate them all rather than drop the rest.
                # Zero padding after the last member is tolerated, as gzip(1) does.
                if not data.strip(b"\x00"):
                    return
                if self._wbits != 31:
                    raise bad_request(_NOT_GZIP)
                obj = self._obj = isal_zlib.decompressobj(self._wbits)
            try:
                out = obj.decompress(data, _OUT_CHUNK)
            except _INFLATE_ERRORS:
                raise bad_request(_NOT_GZIP) from None
            self._add(out)
            data = obj.unused_data if obj.eof else obj.unconsumed_tail

    def _add(self, out: bytes) -> None:
        self._size += len(out)
        if self._size > self._limit:
            raise request_too_large(self._limit)
        self._parts.append(out)

    def finish(self) -> bytes:
        if self._fed and not self._obj.eof:
            try:
                self._add(self._obj.flush())
            except _INFLATE_ERRORS:
                raise bad_request(_NOT_GZIP) from None
            if not self._obj.eof:  # a cut-off body: refuse it whole, never store a prefix
                raise bad_request(_TRUNCATED)
        return b"".join(self._parts)


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The body, decompressed, or an ApiError (413 over the limit, 400 if it is corrupt)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
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
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise ApiError(415, f"unsupported Content-Encoding {encoding!r}; use gzip")
    inflater = _Inflater(encoding, limit)
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:  # compressed input larger than the uncompressed limit
            raise request_too_large(limit)
        inflater.feed(chunk)
    return inflater.finish()
