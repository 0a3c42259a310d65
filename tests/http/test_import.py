"""/import over HTTP: credentials (§1, §2.7), encodings (§2.1, §2.8) and answers (§2.4)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from typing import Any

import httpx
import pytest

from tests.conftest import ProjectCreds, Server, event

VALIDATION_FAILED = "some data points in the request failed validation"


def basic(user: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def post_json(client: httpx.Client, events: list[Any], headers: dict[str, str], path: str = "/import", **params: str) -> httpx.Response:
    return client.post(path, content=json.dumps(events), params=params, headers={"Content-Type": "application/json", **headers})


# -- credentials --------------------------------------------------------------------------------------


def test_api_secret_as_basic_username(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event()], basic(project.secret))
    assert r.status_code == 200 and r.json()["num_records_imported"] == 1
    assert len(server.export(project)) == 1


def test_token_as_basic_username(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event()], basic(project.token), project_id=str(project.id))
    assert r.status_code == 200, r.text
    assert len(server.export(project)) == 1


def test_plain_text_basic_credentials(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    user, secret = server.new_service_account(project)
    r = post_json(client, [event()], {"Authorization": f"Basic {user}:{secret}"}, project_id=str(project.id))
    assert r.status_code == 200, r.text
    r = post_json(client, [event()], {"Authorization": f"Basic {project.secret}:"})
    assert r.status_code == 200, r.text
    assert len(server.export(project)) == 2


def test_service_account_with_project_id(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    user, secret = server.new_service_account(project)
    r = post_json(client, [event()], basic(user, secret), project_id=str(project.id))
    assert r.status_code == 200, r.text
    other = server.new_project()
    r = post_json(client, [event()], basic(user, secret), project_id=str(other.id))
    assert r.status_code == 401
    assert server.export(other) == []


def test_legacy_api_key_parameter(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event()], {}, api_key=project.secret)
    assert r.status_code == 200, r.text
    body = "data=" + base64.b64encode(json.dumps(event()).encode()).decode() + f"&api_key={project.secret}"
    r = client.post("/import", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.text == "1"
    assert len(server.export(project)) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic " + base64.b64encode(b"wrong-secret:").decode()},
        {"Authorization": "Basic nobody:nothing"},
    ],
)
def test_wrong_credentials_get_401_with_mixpanel_body(client: httpx.Client, headers: dict[str, str]) -> None:
    r = post_json(client, [event()], headers)
    assert r.status_code == 401
    assert r.json() == {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}


def test_missing_credentials_get_401(client: httpx.Client) -> None:
    r = post_json(client, [event()], {})
    assert r.status_code == 401
    assert r.json()["status"] == "Unauthorized"


def test_credentials_of_another_project_id_are_refused(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    other = server.new_project()
    r = post_json(client, [event()], basic(project.secret), project_id=str(other.id))
    assert r.status_code == 401


def test_wrong_credentials_on_legacy_form_get_legacy_answer(client: httpx.Client) -> None:
    body = "data=" + base64.b64encode(json.dumps(event()).encode()).decode() + "&verbose=1"
    r = client.post("/import", content=body, headers={"Content-Type": "application/x-www-form-urlencoded", **basic("nope")})
    assert r.status_code == 401
    assert r.json() == {"status": 0, "error": "Invalid credentials"}


# -- encodings ----------------------------------------------------------------------------------------------


def test_trailing_slash(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event()], basic(project.secret), path="/import/")
    assert r.status_code == 200


def test_ndjson_body(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    body = "\n".join(json.dumps(event(n=i)) for i in range(3))
    r = client.post("/import", content=body, headers={"Content-Type": "application/x-ndjson", **basic(project.secret)})
    assert r.json() == {"code": 200, "num_records_imported": 3, "status": "OK"}
    assert sorted(e["properties"]["n"] for e in server.export(project)) == [0, 1, 2]


def test_ndjson_with_a_broken_line_keeps_the_rest(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    body = json.dumps(event(n=0)) + "\n{broken\n" + json.dumps(event(n=2))
    r = client.post("/import", content=body, headers={"Content-Type": "application/x-ndjson", **basic(project.secret)})
    assert r.status_code == 400
    body_json = r.json()
    assert body_json["num_records_imported"] == 2
    assert [(f["index"], f["field"]) for f in body_json["failed_records"]] == [(1, "event")]
    assert sorted(e["properties"]["n"] for e in server.export(project)) == [0, 2]


def test_gzip_body(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    body = gzip.compress(json.dumps([event(n=i) for i in range(50)]).encode())
    r = client.post("/import", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip", **basic(project.secret)})
    assert r.json()["num_records_imported"] == 50
    assert len(server.export(project)) == 50


def test_form_json_body_gets_legacy_answers(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    form = {"data": json.dumps([event(), event()]), "verbose": "1", "ip": "0"}
    r = client.post("/import", data=form, headers=basic(project.secret))
    assert r.status_code == 200 and r.json() == {"status": 1, "error": None}
    r = client.post("/import", data={"data": json.dumps(event())}, headers=basic(project.secret))
    assert r.text == "1"
    assert len(server.export(project)) == 3


def test_form_base64_with_spaces_for_plus(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    sent = event(note=">>>???~~~")
    encoded = base64.b64encode(json.dumps([sent]).encode()).decode()
    assert "+" in encoded
    r = client.post("/import", content="data=" + encoded, headers={"Content-Type": "application/x-www-form-urlencoded", **basic(project.secret)})
    assert r.text == "1"
    [stored] = server.export(project)
    assert stored["properties"]["note"] == ">>>???~~~"


def test_legacy_get_with_base64_data(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    data = base64.b64encode(json.dumps(event()).encode()).decode()
    r = client.get("/import", params={"data": data, "verbose": "1", "ip": "0"}, headers=basic(project.secret))
    assert r.json() == {"status": 1, "error": None}
    assert len(server.export(project)) == 1


def test_legacy_form_failure_reports_status_0(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    form = {"data": json.dumps([event(), event("")]), "verbose": "1"}
    r = client.post("/import", data=form, headers=basic(project.secret))
    assert r.status_code == 200
    assert r.json() == {
        "status": 0,
        "error": "some data points in the request failed validation: record 1: 'event' must not be missing or blank",
    }
    assert len(server.export(project)) == 1


# -- answers ------------------------------------------------------------------------------------------------


def test_success_body(project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event(), event()], basic(project.secret), strict="1")
    assert r.json() == {"code": 200, "num_records_imported": 2, "status": "OK"}


def test_verbose_success_body_has_status_1(project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event()], basic(project.secret), verbose="1")
    assert r.json() == {"code": 200, "num_records_imported": 1, "status": 1}


def test_strict_failure_body(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    future = int(time.time()) + 7 * 3600
    events = [event(), event(time=future, **{"$insert_id": "id-future"}), event(), event(**{"$insert_id": "ajs-next-1:2"})]
    r = post_json(client, events, basic(project.secret), strict="1")
    assert r.status_code == 400
    assert r.json() == {
        "code": 400,
        "error": VALIDATION_FAILED,
        "failed_records": [
            {"index": 1, "insert_id": "id-future", "$insert_id": "id-future", "field": "properties.time",
             "message": "'properties.time' is invalid: must not be in the future"},
            {"index": 3, "insert_id": "ajs-next-1:2", "$insert_id": "ajs-next-1:2", "field": "$insert_id",
             "message": "'$insert_id' is invalid: must only contain alphanumeric or hyphen '-' characters"},
        ],
        "num_records_imported": 2,
        "status": "Bad Request",
    }
    assert len(server.export(project)) == 2


def test_strict_is_the_default(project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event(""), event()], basic(project.secret))
    assert r.status_code == 400 and r.json()["num_records_imported"] == 1


def test_non_strict_keeps_the_valid_part_and_still_reports(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = post_json(client, [event(""), event()], basic(project.secret), strict="0")
    assert r.status_code == 200
    body = r.json()
    assert body["num_records_imported"] == 1 and body["status"] == "OK"
    assert [f["index"] for f in body["failed_records"]] == [0]
    assert len(server.export(project)) == 1


def test_duplicates_are_stored_once_and_latest_wins(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    first = event(version=1, **{"$insert_id": "same-id"})
    second = json.loads(json.dumps(first))
    second["properties"]["version"] = 2
    assert post_json(client, [first], basic(project.secret)).status_code == 200
    assert post_json(client, [second, first, second], basic(project.secret)).json()["num_records_imported"] == 3
    [stored] = server.export(project)
    assert stored["properties"]["version"] == 2


def test_dedup_key_includes_time_event_and_distinct_id(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    base = event(**{"$insert_id": "shared"})
    variants = [base, event("Other", **{"$insert_id": "shared"}), event(distinct_id="user-2", **{"$insert_id": "shared"}),
                event(time=base["properties"]["time"] - 1, **{"$insert_id": "shared"})]
    post_json(client, variants, basic(project.secret))
    assert len(server.export(project)) == 4


def test_seconds_and_milliseconds_store_the_same_instant(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    t = int(time.time()) - 86400
    post_json(client, [event(time=t, **{"$insert_id": "s"}), event(time=t * 1000, **{"$insert_id": "ms"})], basic(project.secret))
    exported = server.export(project, time_in_ms="true")
    assert sorted(e["properties"]["time"] for e in exported) == [t * 1000, t * 1000]


def test_events_without_insert_id_are_never_deduplicated(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    bare = {"event": "e", "properties": {"time": int(time.time()) - 10, "distinct_id": "u"}}
    post_json(client, [bare, bare], basic(project.secret))
    post_json(client, [bare], basic(project.secret))
    stored = server.export(project)
    assert len(stored) == 3
    assert len({e["properties"]["$insert_id"] for e in stored}) == 3
