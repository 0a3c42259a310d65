"""Every answer a client sees is rendered here, in the shape its request asked for.

Mixpanel answers in several shapes (spec §2.4, §2.8, §3.3): /import with a JSON body gets
`{"code", "num_records_imported", "status"}`; form-encoded and /track-style requests get
`1`/`0`, or `{"status", "error"}` with verbose=1; `img=1` gets a GIF, `callback=` gets JSONP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import orjson
from starlette.responses import Response

from eventkeep.errors import VALIDATION_FAILED, ApiError, RecordError

# A transparent 1x1 GIF, as /track?img=1 serves.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,"
    b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

# JSONP callback names: identifiers, member access and the `(function(){})` the JS SDK sends;
# nothing that could close a script context or inject markup.
_CALLBACK_RE = re.compile(r"[A-Za-z0-9_$.()\[\]{}]{1,200}")


class Style(Enum):
    IMPORT_JSON = "import_json"  # /import with a JSON or NDJSON body
    LEGACY = "legacy"  # /track, /engage, /groups, and form-encoded /import


@dataclass(frozen=True)
class Answer:
    """How to phrase the answer, read from the request's parameters."""

    style: Style
    verbose: int = 0
    img: bool = False
    callback: str | None = None

    @classmethod
    def from_params(cls, style: Style, params: dict[str, str]) -> Answer:
        verbose_raw = params.get("verbose", "0")
        verbose = int(verbose_raw) if verbose_raw in ("0", "1", "2") else 0
        callback = params.get("callback") or None
        if callback is not None and not _CALLBACK_RE.fullmatch(callback):
            callback = None
        return cls(style, verbose, params.get("img") == "1", callback)


def _json(body: object, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def _retry_headers(error: ApiError) -> dict[str, str] | None:
    if error.retry_after is not None:
        return {"Retry-After": str(error.retry_after)}
    return None


def render_error(answer: Answer, error: ApiError) -> Response:
    headers = _retry_headers(error)
    if answer.style is Style.IMPORT_JSON:
        body = {"code": error.status, "error": error.message, "status": error.reason}
        return _json(body, error.status, headers)
    # Legacy endpoints answer validation problems with HTTP 200 and status 0 (as Mixpanel
    # does); credentials, size and server trouble keep their own HTTP status so that
    # retrying clients can tell them apart.
    status = error.status if error.status != 400 or answer.verbose == 2 else 200
    return _legacy(answer, 0, error.message, status, headers)


def _legacy(
    answer: Answer,
    ok: int,
    message: str | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    if answer.img:
        return Response(PIXEL_GIF, 200, headers=headers, media_type="image/gif")
    if answer.verbose:
        payload: object = {"status": ok, "error": message}
        text = orjson.dumps(payload).decode()
        media = "application/json"
    else:
        text = str(ok)
        media = "text/plain"
    if answer.callback:
        return Response(
            f"{answer.callback}({text});",
            status,
            headers={**(headers or {}), "X-Content-Type-Options": "nosniff"},
            media_type="text/javascript",
        )
    return Response(text, status, headers=headers, media_type=media)


def render_import(
    answer: Answer, imported: int, errors: list[RecordError], strict: bool
) -> Response:
    """The answer to an /import batch once its valid part is committed."""
    if answer.style is Style.LEGACY:
        if not errors:
            return _legacy(answer, 1, None)
        return _legacy(answer, 0, _summarise(errors, imported), 400 if answer.verbose == 2 else 200)
    ok_status: object = 1 if answer.verbose == 1 else "OK"
    if errors and strict:
        body = {
            "code": 400,
            "error": VALIDATION_FAILED,
            "failed_records": [e.as_json() for e in errors],
            "num_records_imported": imported,
            "status": "Bad Request",
        }
        return _json(body, 400)
    body = {"code": 200, "num_records_imported": imported, "status": ok_status}
    if errors:
        body["failed_records"] = [e.as_json() for e in errors]
    return _json(body, 200)


def render_track(answer: Answer, stored: int, errors: list[RecordError]) -> Response:
    """/track, /engage, /groups: `1` when all went in, `0` with the reasons otherwise."""
    if not errors:
        return _legacy(answer, 1, None)
    status = 400 if answer.verbose == 2 else 200
    # "1: One or more objects provided are valid" (spec §3.3) for the plain answer; the
    # verbose answer names every refusal so nothing is dropped silently.
    ok = 1 if stored and not answer.verbose else 0
    return _legacy(answer, ok, _summarise(errors, stored), status)


def _summarise(errors: list[RecordError], stored: int) -> str:
    """One refusal of a one-event request reads plainly; otherwise each names its record."""
    if len(errors) == 1 and stored == 0:
        return errors[0].message
    shown = "; ".join(f"record {e.index}: {e.message}" for e in errors[:5])
    more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
    return f"{VALIDATION_FAILED}: {shown}{more}"
