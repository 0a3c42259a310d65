"""Inflate a request body within Mixpanel's limits.

The 10 MB limit applies to the uncompressed body. Decompression is bounded chunk by chunk,
so a gzip bomb (a kilobyte that inflates to a gigabyte) is refused after inflating just
over the limit, never held whole in memory. This is plain bytes in, bytes out, so that it
can run wherever the rest of a request's per-event work runs (see eventkeep.http.checkers).
"""

from __future__ import annotations

import zlib
from typing import cast

from isal import isal_zlib
from isal.igzip_lib import IsalError

from eventkeep.errors import ApiError, bad_request, request_too_large

SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate")

_OUT_CHUNK = 1024 * 1024
# isal's type stubs do not declare IsalError an exception class.
_INFLATE_ERRORS = cast(tuple[type[Exception], ...], (IsalError, zlib.error))

_NOT_GZIP = "request body is not valid gzip"
_TRUNCATED = "request body is not valid gzip: the compressed stream is truncated"


def is_compressed(encoding: str) -> bool:
    """Whether a (lower-cased) Content-Encoding says the body needs inflating."""
    return encoding not in ("", "identity")


def check_encoding(encoding: str) -> None:
    """Refuse a Content-Encoding that cannot be inflated (415), before reading the body."""
    if is_compressed(encoding) and encoding not in SUPPORTED_ENCODINGS:
        raise ApiError(415, f"unsupported Content-Encoding {encoding!r}; use gzip")


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """The body as sent, decompressed per its Content-Encoding; an ApiError if over `limit`
    uncompressed (413) or corrupt (400)."""
    check_encoding(encoding)
    if not is_compressed(encoding):
        if len(body) > limit:
            raise request_too_large(limit)
        return body
    inflater = _Inflater(encoding, limit)
    inflater.feed(body)
    return inflater.finish()


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
        if len(self._parts) == 1:
            return self._parts[0]
        return b"".join(self._parts)
