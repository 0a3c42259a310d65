"""Raw export over HTTP (spec §5): auth, parameters, dates in the project's zone, streaming."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.conftest import ProjectCreds, Server, event


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def load(client: httpx.Client, project: ProjectCreds, events: list[dict[str, Any]]) -> None:
    r = client.post("/import", json=events, auth=(project.secret, ""))
    assert r.status_code == 200, r.text


def export(client: httpx.Client, project: ProjectCreds, **params: Any) -> httpx.Response:
    return client.get("/api/2.0/export", params=params, auth=(project.secret, ""))


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_token_never_authorises_export(project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/api/2.0/export", params={"from_date": "2024-01-01", "to_date": "2024-01-01"}, auth=(project.token, ""))
    assert r.status_code == 401
    assert r.json()["error"] == "Invalid credentials"


def test_service_account_needs_its_project(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    user, secret = server.new_service_account(project)
    params = {"from_date": "2024-01-01", "to_date": "2024-01-01"}
    assert client.get("/api/2.0/export", params={**params, "project_id": project.id}, auth=(user, secret)).status_code == 200
    other = server.new_project()
    assert client.get("/api/2.0/export", params={**params, "project_id": other.id}, auth=(user, secret)).status_code == 401


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"to_date": "2024-01-01"}, "'from_date' is a required parameter (yyyy-mm-dd)"),
        ({"from_date": "2024-01-01"}, "'to_date' is a required parameter (yyyy-mm-dd)"),
        ({"from_date": "2024-13-01", "to_date": "2024-01-01"}, "'from_date' must be a date in yyyy-mm-dd format, got '2024-13-01'"),
        ({"from_date": "2024-01-02", "to_date": "2024-01-01"}, "'to_date' (2024-01-01) is before 'from_date' (2024-01-02)"),
        ({"from_date": "2024-01-01", "to_date": "2024-01-01", "limit": "100001"}, "'limit' must be between 0 and 100000"),
        ({"from_date": "2024-01-01", "to_date": "2024-01-01", "event": "[1, 2]"}, "'event' must be a JSON array of event names (strings)"),
        ({"from_date": "2024-01-01", "to_date": "2024-01-01", "event": "[\"a\""}, "'event' must be a JSON array of event names"),
    ],
)
def test_bad_parameters_are_400_with_a_message(project: ProjectCreds, client: httpx.Client, params: dict[str, str], message: str) -> None:
    r = export(client, project, **params)
    assert r.status_code == 400
    assert r.json() == {"request": "/api/2.0/export", "error": message}


def test_dates_are_inclusive_and_ordered_by_time(project: ProjectCreds, client: httpx.Client) -> None:
    times = {"before": utc("2024-01-31T23:59:59"), "first": utc("2024-02-01T00:00:00"),
             "last": utc("2024-02-02T23:59:59"), "after": utc("2024-02-03T00:00:00")}
    load(client, project, [event(name, time=t) for name, t in reversed(times.items())])
    got = lines(export(client, project, from_date="2024-02-01", to_date="2024-02-02"))
    assert [e["event"] for e in got] == ["first", "last"]
    assert [e["properties"]["time"] for e in got] == [times["first"], times["last"]]


def test_event_filter_as_array_or_bare_name(project: ProjectCreds, client: httpx.Client) -> None:
    t = utc("2024-03-01T12:00:00")
    load(client, project, [event("A", time=t), event("B", time=t + 1), event("C", time=t + 2)])
    day = {"from_date": "2024-03-01", "to_date": "2024-03-01"}
    assert [e["event"] for e in lines(export(client, project, **day, event='["A","C"]'))] == ["A", "C"]
    assert [e["event"] for e in lines(export(client, project, **day, event="B"))] == ["B"]


def test_limit_and_time_in_ms(project: ProjectCreds, client: httpx.Client) -> None:
    t = utc("2024-03-02T00:00:00")
    load(client, project, [event(time=t * 1000 + i * 400) for i in range(4)])
    day = {"from_date": "2024-03-02", "to_date": "2024-03-02"}
    assert [e["properties"]["time"] for e in lines(export(client, project, **day, limit="2", time_in_ms="true"))] == [t * 1000, t * 1000 + 400]
    assert [e["properties"]["time"] for e in lines(export(client, project, **day))] == [t, t, t, t + 1]


def test_empty_result_is_an_empty_body(project: ProjectCreds, client: httpx.Client) -> None:
    r = export(client, project, from_date="2020-01-01", to_date="2020-01-01")
    assert r.status_code == 200 and r.content == b""


def test_gzip_when_asked(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    t = utc("2024-03-03T00:00:00")
    load(client, project, [event(time=t + i) for i in range(100)])
    with httpx.stream("GET", f"{server.url}/api/2.0/export", params={"from_date": "2024-03-03", "to_date": "2024-03-03"},
                      auth=(project.secret, ""), headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["content-encoding"] == "gzip"
        raw = b"".join(r.iter_raw())
    assert len(gzip.decompress(raw).splitlines()) == 100


def test_post_with_form_parameters(project: ProjectCreds, client: httpx.Client) -> None:
    load(client, project, [event(time=utc("2024-03-04T10:00:00"))])
    r = client.post("/api/2.0/export/", data={"from_date": "2024-03-04", "to_date": "2024-03-04"}, auth=(project.secret, ""))
    assert len(lines(r)) == 1


# -- time zones across a DST change ---------------------------------------------------------------------
# America/Los_Angeles springs forward on 2024-03-10: that local day is 23 hours long,
# from 08:00 UTC on the 10th to 07:00 UTC on the 11th.

DST_EVENTS = {
    "day before, last second": utc("2024-03-10T07:59:59"),
    "first second (PST)": utc("2024-03-10T08:00:00"),
    "after the change (PDT)": utc("2024-03-10T12:00:00"),
    "last second (PDT)": utc("2024-03-11T06:59:59"),
    "next day, first second": utc("2024-03-11T07:00:00"),
}


def _dst_project(server: Server, client: httpx.Client, legacy: bool) -> ProjectCreds:
    project = server.new_project(time_zone="America/Los_Angeles")
    if legacy:
        registry = server.registry()
        registry.update_project(project.id, legacy_local_time=True)
        registry.close()
    load(client, project, [event(name, time=t) for name, t in DST_EVENTS.items()])
    return project


def test_dates_are_read_in_the_project_time_zone_across_dst(server: Server, client: httpx.Client) -> None:
    project = _dst_project(server, client, legacy=False)
    got = lines(export(client, project, from_date="2024-03-10", to_date="2024-03-10"))
    assert [e["event"] for e in got] == ["first second (PST)", "after the change (PDT)", "last second (PDT)"]
    # default mode: true UTC epoch seconds
    assert [e["properties"]["time"] for e in got] == [DST_EVENTS[e["event"]] for e in got]


def test_legacy_mode_shifts_time_into_the_project_zone(server: Server, client: httpx.Client) -> None:
    project = _dst_project(server, client, legacy=True)
    got = lines(export(client, project, from_date="2024-03-10", to_date="2024-03-10"))
    assert [e["event"] for e in got] == ["first second (PST)", "after the change (PDT)", "last second (PDT)"]
    shifted = {e["event"]: e["properties"]["time"] for e in got}
    assert shifted["first second (PST)"] == utc("2024-03-10T00:00:00")  # UTC-8
    assert shifted["after the change (PDT)"] == utc("2024-03-10T05:00:00")  # UTC-7
    assert shifted["last second (PDT)"] == utc("2024-03-10T23:59:59")  # UTC-7
    got_ms = lines(export(client, project, from_date="2024-03-10", to_date="2024-03-10", time_in_ms="1"))
    assert got_ms[0]["properties"]["time"] == utc("2024-03-10T00:00:00") * 1000
