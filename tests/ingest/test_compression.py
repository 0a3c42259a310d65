"""Inflating request bodies: every gzip shape clients send, and every way one can be bad."""

from __future__ import annotations

import gzip
import zlib

import pytest

from eventkeep.errors import ApiError
from eventkeep.ingest.compression import inflate
from tests.conftest import gzip_bomb

LIMIT = 10 * 1024 * 1024
TEXT = b'{"event":"e","properties":{"time":1}}\n' * 1000


def refusal(body: bytes, encoding: str, limit: int = LIMIT) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        inflate(body, encoding, limit)
    return caught.value.status, caught.value.message


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip"])
def test_gzip_inflates(encoding: str) -> None:
    assert inflate(gzip.compress(TEXT), encoding, LIMIT) == TEXT


def test_deflate_is_the_zlib_container() -> None:
    assert inflate(zlib.compress(TEXT), "deflate", LIMIT) == TEXT


def test_identity_passes_through_within_the_limit() -> None:
    assert inflate(TEXT, "", LIMIT) == TEXT
    assert inflate(TEXT, "identity", LIMIT) == TEXT
    assert refusal(TEXT, "", limit=len(TEXT) - 1)[0] == 413


def test_concatenated_gzip_members_are_one_body() -> None:
    half = len(TEXT) // 2
    body = gzip.compress(TEXT[:half]) + gzip.compress(TEXT[half:])
    assert inflate(body, "gzip", LIMIT) == TEXT


def test_zero_padding_after_the_stream_is_tolerated() -> None:
    assert inflate(gzip.compress(TEXT) + b"\x00" * 512, "gzip", LIMIT) == TEXT


def test_a_cut_off_stream_is_refused_whole() -> None:
    body = gzip.compress(TEXT)
    assert refusal(body[: len(body) // 2], "gzip") == (
        400, "request body is not valid gzip: the compressed stream is truncated",
    )


def test_garbage_is_not_gzip() -> None:
    assert refusal(b"definitely not gzip", "gzip") == (400, "request body is not valid gzip")
    assert refusal(gzip.compress(TEXT) + b"junk after", "gzip") == (400, "request body is not valid gzip")
    # After a zlib stream there is no second member to start.
    assert refusal(zlib.compress(TEXT) + b"more", "deflate") == (400, "request body is not valid gzip")


def test_the_limit_applies_to_the_inflated_size() -> None:
    body = gzip.compress(TEXT)
    assert inflate(body, "gzip", len(TEXT)) == TEXT
    assert refusal(body, "gzip", limit=len(TEXT) - 1) == (413, f"request exceeds max limit of {len(TEXT) - 1} bytes")


def test_a_bomb_is_refused_after_inflating_just_past_the_limit() -> None:
    status, message = refusal(gzip_bomb(256 * 1024 * 1024), "gzip")
    assert (status, message) == (413, "request exceeds max limit of 10485760 bytes")


def test_unknown_encodings_are_unsupported_media() -> None:
    assert refusal(TEXT, "br") == (415, "unsupported Content-Encoding 'br'; use gzip")
