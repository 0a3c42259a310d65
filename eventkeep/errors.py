"""Errors as values, worded the way Mixpanel words them.

Every failure a client can see is one of these. They are raised anywhere below the HTTP
layer and rendered in exactly one place (`eventkeep.http.responses`), so a message never
depends on which code path noticed the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventkeep.ingest.limits import MAX_EVENTS_PER_REQUEST, MAX_REQUEST_BYTES

# Mixpanel's reason phrases for the `status` field of /import-style JSON bodies.
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """A request-level failure: one HTTP status, one message."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def reason(self) -> str:
        return REASONS.get(self.status, "Error")

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r})"


def invalid_credentials() -> ApiError:
    return ApiError(401, "Invalid credentials")


def missing_credentials() -> ApiError:
    return ApiError(401, "Unauthorized: missing credentials")


def forbidden(message: str = "Forbidden") -> ApiError:
    return ApiError(403, message)


def request_too_large(limit: int = MAX_REQUEST_BYTES) -> ApiError:
    return ApiError(413, f"request exceeds max limit of {limit} bytes")


def too_many_events(limit: int = MAX_EVENTS_PER_REQUEST) -> ApiError:
    return ApiError(413, f"request exceeds max limit of {limit} records")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def store_unavailable(retry_after: int = 5) -> ApiError:
    return ApiError(
        503,
        "a temporary failure occurred; the request was not stored, please retry",
        retry_after=retry_after,
    )


def internal_error(retry_after: int = 5) -> ApiError:
    return ApiError(
        500,
        "an internal error occurred; the request was not stored, please retry",
        retry_after=retry_after,
    )


VALIDATION_FAILED = "some data points in the request failed validation"


@dataclass(frozen=True, slots=True)
class RecordError:
    """Why one event of a batch was refused; rendered as a `failed_records` entry."""

    index: int
    insert_id: str | None
    field: str
    message: str

    def as_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "insert_id": self.insert_id,
            "$insert_id": self.insert_id,
            "field": self.field,
            "message": self.message,
        }
