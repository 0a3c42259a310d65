from typing import Literal, overload

MAX_EVENTS: int
MAX_STRING_CHARS: int
MAX_ITEMS: int
MAX_EVENT_BYTES: int
MIN_TIME_MS: int
MS_THRESHOLD: int
TRACK_MAX_AGE_MS: int

@overload
def check(
    body: bytes | memoryview, array: bool, track: bool, now_ms: int, tail: bytes, reserved: tuple[bytes, ...],
    columns: Literal[True] = ..., /,
) -> tuple[int, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, list[str | None] | None] | None: ...
@overload
def check(
    body: bytes | memoryview, array: bool, track: bool, now_ms: int, tail: bytes, reserved: tuple[bytes, ...],
    columns: Literal[False], /,
) -> int | None: ...
def encode_float(value: float, /) -> bytes: ...
def next_records(data: bytes, start: int, wanted: int, /) -> tuple[int, int, int]: ...
