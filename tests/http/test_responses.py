"""The renderer: one place decides every answer's shape."""

from __future__ import annotations

import json

from eventkeep.errors import (
    RecordError,
    internal_error,
    invalid_credentials,
    request_too_large,
    store_unavailable,
)
from eventkeep.http.responses import Answer, Style, render_error, render_import, render_track

JSON = Answer(Style.IMPORT_JSON)
PLAIN = Answer(Style.LEGACY)
VERBOSE = Answer(Style.LEGACY, verbose=1)


def test_store_trouble_is_a_503_with_retry_after_in_every_style() -> None:
    for answer in (JSON, PLAIN, VERBOSE):
        response = render_error(answer, store_unavailable())
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
    body = json.loads(render_error(JSON, store_unavailable()).body)
    assert body["code"] == 503 and body["status"] == "Service Unavailable"


def test_internal_errors_are_500_with_retry_after() -> None:
    response = render_error(JSON, internal_error())
    assert response.status_code == 500 and response.headers["retry-after"] == "5"
    assert json.loads(response.body)["status"] == "Internal Server Error"


def test_413_body_is_mixpanels() -> None:
    response = render_error(JSON, request_too_large())
    assert response.status_code == 413
    assert json.loads(response.body) == {
        "code": 413,
        "error": "request exceeds max limit of 10485760 bytes",
        "status": "Request Entity Too Large",
    }


def test_legacy_401_keeps_its_status() -> None:
    response = render_error(PLAIN, invalid_credentials())
    assert response.status_code == 401 and response.body == b"0"


def test_import_with_failures_not_strict() -> None:
    error = RecordError(1, "x", "event", "'event' must not be missing or blank")
    body = json.loads(render_import(JSON, 3, [error], strict=False).body)
    assert body == {"code": 200, "num_records_imported": 3, "status": "OK", "failed_records": [error.as_json()]}


def test_track_plain_zero_when_nothing_stored() -> None:
    error = RecordError(0, None, "event", "'event' must not be missing or blank")
    assert render_track(PLAIN, 0, [error]).body == b"0"
    assert render_track(PLAIN, 1, [error]).body == b"1"
    assert json.loads(render_track(VERBOSE, 0, [error]).body) == {"status": 0, "error": error.message}


def test_many_refusals_are_summarised_with_a_count() -> None:
    errors = [RecordError(i, None, "event", "bad") for i in range(8)]
    message = json.loads(render_track(VERBOSE, 0, errors).body)["error"]
    assert message.startswith("some data points in the request failed validation: record 0: bad; record 1: bad")
    assert message.endswith("; and 3 more")
