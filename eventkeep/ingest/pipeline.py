"""From a request's body, as sent, to a checked, columnar batch: one pure function.

This is all the per-event work of /import and /track. It takes and returns plain, picklable
data so that the server can run it in worker processes (eventkeep.http.checkers): Python
runs one thread at a time, and decoding and checking is what would otherwise hold a whole
server to one core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eventkeep.errors import ApiError, too_many_events
from eventkeep.ingest.batch import ValidBatch
from eventkeep.ingest.compression import inflate
from eventkeep.ingest.fastpath import accept_clean_body
from eventkeep.ingest.limits import MAX_EVENTS_PER_REQUEST, MAX_REQUEST_BYTES
from eventkeep.ingest.payload import Encoding, body_shape, parse_body
from eventkeep.ingest.validate import (
    Endpoint,
    IngestContext,
    distinct_id_for_address,
    validate_events,
)


@dataclass(frozen=True, slots=True)
class EventRequest:
    """What the checking needs to know of an HTTP request; no HTTP objects."""

    endpoint: Endpoint
    body: bytes  # as sent: compressed if `content_encoding` says so
    content_type: str
    query: dict[str, str]
    now_ms: int
    api_host: str = "localhost"
    client_host: str | None = None
    content_encoding: str = ""


@dataclass(slots=True)
class CheckedEvents:
    """The outcome: how the events came, the parameters seen, and the batch or the error.

    The error is carried as (status, message) rather than raised, so that it crosses a
    process boundary unchanged.
    """

    encoding: Encoding = "json"
    params: dict[str, str] = field(default_factory=dict)
    count: int = 0
    batch: ValidBatch = field(default_factory=ValidBatch)
    error: tuple[int, str] | None = None

    @property
    def decoded(self) -> bool:
        """Whether the body decoded (its parameters are known), even if it was refused."""
        return self.error is None or self.count > 0

    def raise_error(self) -> None:
        if self.error is not None:
            raise ApiError(*self.error)


def check_events(request: EventRequest) -> CheckedEvents:
    """Inflate, decode, count and validate; never raises for bad input.

    A clean batch (the usual kind) is accepted whole by the compiled scanner; any other
    is decoded and validated in Python, which gives each refused event its reason.
    """
    try:
        body = inflate(request.body, request.content_encoding, MAX_REQUEST_BYTES)
    except ApiError as error:
        return CheckedEvents(error=(error.status, error.message))
    shape = body_shape(body, request.content_type)
    if shape is not None:
        ctx = IngestContext(request.endpoint, request.now_ms, request.api_host)
        clean = accept_clean_body(body, shape, ctx)
        if clean is not None:
            return CheckedEvents(shape, dict(request.query), len(clean), clean)
    try:
        payload = parse_body(body, request.content_type, request.query, events=True)
    except ApiError as error:
        return CheckedEvents(error=(error.status, error.message))
    result = CheckedEvents(payload.encoding, payload.params, len(payload.items))
    if result.count > MAX_EVENTS_PER_REQUEST:
        refusal = too_many_events()
        result.error = (refusal.status, refusal.message)
        return result
    fallback = None
    if request.endpoint == "track" and payload.params.get("ip") == "1" and request.client_host:
        fallback = distinct_id_for_address(request.client_host)
    ctx = IngestContext(request.endpoint, request.now_ms, request.api_host, fallback)
    result.batch = validate_events(payload.items, ctx, payload.line_errors)
    return result
