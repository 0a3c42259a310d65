"""/track over HTTP: request forms (§3.1), parameters (§3.2), answers (§3.3) and age (§3.4)."""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from eventkeep.http.responses import PIXEL_GIF
from tests.conftest import ProjectCreds, Server

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def tracked(project: ProjectCreds, name: str = "Viewed", **props: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {"token": project.token, "distinct_id": "visitor", "$insert_id": uuid.uuid4().hex,
                                  "time": time.time() - 5}
    properties.update(props)
    return {"event": name, "properties": properties}


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def test_post_form_base64(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/track/", params={"ip": "1", "_": "123"}, content="data=" + b64([tracked(project), tracked(project)]), headers=FORM)
    assert r.status_code == 200 and r.text == "1"
    assert len(server.export(project)) == 2


def test_post_form_json(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/track", data={"data": json.dumps(tracked(project, price=9.5))})
    assert r.text == "1"
    [stored] = server.export(project)
    assert stored["properties"]["price"] == 9.5 and "$import" not in stored["properties"]


def test_get_with_base64_data(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/track", params={"data": b64(tracked(project)), "ip": "0"})
    assert r.text == "1"
    assert len(server.export(project)) == 1


def test_json_array_body_with_gzip(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    body = gzip.compress(json.dumps([tracked(project) for _ in range(5)]).encode())
    r = client.post("/track", params={"verbose": "1"}, content=body,
                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.json() == {"status": 1, "error": None}
    assert len(server.export(project)) == 5


def test_gzipped_form_body(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    body = gzip.compress(("data=" + b64([tracked(project)])).encode())
    r = client.post("/track", content=body, headers={**FORM, "Content-Encoding": "gzip"})
    assert r.text == "1"


def test_missing_time_means_now(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    e = tracked(project)
    del e["properties"]["time"]
    before = int(time.time() * 1000)
    client.post("/track", data={"data": json.dumps(e)})
    after = int(time.time() * 1000)
    [stored] = server.export(project, time_in_ms="1")
    assert before <= stored["properties"]["time"] <= after


def test_events_older_than_five_days_are_refused(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    old = tracked(project, time=time.time() - 6 * 86400)
    r = client.post("/track", params={"verbose": "1"}, data={"data": json.dumps([old])})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == 0 and "older than 5 days" in body["error"]
    r = client.post("/track", data={"data": json.dumps([old])})
    assert r.text == "0"
    assert server.export(project) == []


def test_plain_answer_is_1_when_some_are_valid(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/track", data={"data": json.dumps([tracked(project), tracked(project, "")])})
    assert r.text == "1"
    assert len(server.export(project)) == 1


def test_verbose_answer_names_the_refusal(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/track", params={"verbose": "1"}, data={"data": json.dumps([tracked(project), tracked(project, "")])})
    assert r.json() == {
        "status": 0,
        "error": "some data points in the request failed validation: record 1: 'event' must not be missing or blank",
    }


def test_verbose_2_turns_errors_into_http_400(project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/track", params={"verbose": "2"}, data={"data": json.dumps([tracked(project, "")])})
    assert r.status_code == 400
    assert r.json() == {"status": 0, "error": "'event' must not be missing or blank"}


def test_missing_token(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    e = tracked(project)
    del e["properties"]["token"]
    r = client.post("/track", params={"verbose": "1"}, data={"data": json.dumps(e)})
    assert r.json() == {"status": 0, "error": "token, missing or empty"}
    assert client.post("/track", data={"data": json.dumps(e)}).text == "0"


def test_unknown_token(project: ProjectCreds, client: httpx.Client) -> None:
    e = tracked(project, token="not-a-token")
    r = client.post("/track", params={"verbose": "1"}, data={"data": json.dumps(e)})
    assert r.json() == {"status": 0, "error": "token, not a known project token"}


def test_events_route_to_the_project_their_token_names(server: Server, client: httpx.Client) -> None:
    a, b = server.new_project(), server.new_project()
    r = client.post("/track", data={"data": json.dumps([tracked(a, "A"), tracked(b, "B"), tracked(a, "A")])})
    assert r.text == "1"
    assert [e["event"] for e in server.export(a)] == ["A", "A"]
    assert [e["event"] for e in server.export(b)] == ["B"]


def test_ignore_drops_silently(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/track", params={"verbose": "1"}, data={"data": json.dumps([tracked(project, **{"$ignore": True})])})
    assert r.json() == {"status": 1, "error": None}
    assert server.export(project) == []


def test_img_returns_a_gif(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/track", params={"data": b64(tracked(project)), "img": "1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/gif"
    assert r.content == PIXEL_GIF and r.content.startswith(b"GIF89a")
    assert len(server.export(project)) == 1


@pytest.mark.parametrize(("verbose", "expected"), [("0", "cb(1);"), ("1", 'cb({"status":1,"error":null});')])
def test_jsonp_callback(project: ProjectCreds, client: httpx.Client, verbose: str, expected: str) -> None:
    r = client.get("/track", params={"data": b64(tracked(project)), "callback": "cb", "verbose": verbose})
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.text == expected


def test_js_sdk_callback_form_is_accepted(project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/track", params={"data": b64(tracked(project)), "callback": "(function(){})"})
    assert r.text == "(function(){})(1);"


def test_unsafe_callback_is_not_echoed(project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/track", params={"data": b64(tracked(project)), "callback": "</script><script>alert(1)"})
    assert "script" not in r.text and r.text == "1"


def test_cors_preflight_allows_credentials_from_any_origin(client: httpx.Client) -> None:
    r = client.options("/track/", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-headers"] == "content-type"


def test_cors_headers_on_the_answer(project: ProjectCreds, client: httpx.Client) -> None:
    r = client.post("/track/", data={"data": b64([tracked(project)])}, headers={"Origin": "https://shop.example"})
    assert r.text == "1"
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    assert r.headers["access-control-allow-credentials"] == "true"


def test_ip_1_without_distinct_id_derives_one(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    e = tracked(project)
    del e["properties"]["distinct_id"]
    assert client.post("/track", params={"ip": "1"}, data={"data": json.dumps(e)}).text == "1"
    assert client.post("/track", params={"ip": "0"}, data={"data": json.dumps(e)}).text == "0"
    [stored] = server.export(project)
    assert len(stored["properties"]["distinct_id"]) == 32


def test_broken_data_gets_legacy_zero(client: httpx.Client) -> None:
    assert client.post("/track", data={"data": "%%%"}).text == "0"
    r = client.post("/track", params={"verbose": "1"}, data={"data": "{not json"})
    assert r.status_code == 200 and r.json()["status"] == 0
