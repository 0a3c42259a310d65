"""The official Python SDK (`mixpanel`), pointed at a local eventkeep server.

The SDK sends form bodies (`data=<JSON>&verbose=1&ip=0`) and insists on the answer
`{"status": 1, ...}`; /import calls carry the API secret or a service account as Basic auth.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from mixpanel import (
    BufferedConsumer,
    Consumer,
    Mixpanel,
    MixpanelException,
    ServiceAccountCredentials,
)

from tests.conftest import ProjectCreds, Server


def urls(server: Server) -> dict[str, str]:
    return {
        "events_url": f"{server.url}/track",
        "people_url": f"{server.url}/engage",
        "import_url": f"{server.url}/import",
        "groups_url": f"{server.url}/groups",
    }


def by_insert_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = [e["properties"]["$insert_id"] for e in events]
    assert len(ids) == len(set(ids)), f"an event was stored twice: {sorted(ids)}"
    return {e["properties"]["$insert_id"]: e for e in events}


def test_track_with_consumer_stores_each_event_once(server: Server, project: ProjectCreds) -> None:
    mp = Mixpanel(project.token, consumer=Consumer(**urls(server), request_timeout=10))
    before_ms = int(time.time() * 1000)
    mp.track("user-a", "Page viewed", {"page": "/home", "n": 1, "ok": True})
    mp.track("user-b", "Page viewed", {"page": "/pricing", "n": 2, "ok": False})
    mp.track(42, "Signed up", {"plan": "pro", "tags": ["a", "b"]})
    # An explicit fractional time, as time.time() gives: stored to the millisecond.
    clicked_at = int(time.time()) - 3600 + 0.1234
    mp.track("user-a", "Clicked", {"time": clicked_at, "button": "buy"})
    after_ms = int(time.time() * 1000) + 1

    stored = server.export(project, time_in_ms="true")
    assert len(stored) == 4
    by_name = sorted(stored, key=lambda e: (e["event"], str(e["properties"]["distinct_id"])))
    assert [(e["event"], e["properties"]["distinct_id"]) for e in by_name] == [
        ("Clicked", "user-a"),
        ("Page viewed", "user-a"),
        ("Page viewed", "user-b"),
        ("Signed up", "42"),
    ]
    clicked, home, pricing, signup = by_name
    assert clicked["properties"]["time"] == round(clicked_at * 1000)
    assert clicked["properties"]["button"] == "buy"
    for e in (home, pricing, signup):
        assert before_ms - 1 <= e["properties"]["time"] <= after_ms
    assert home["properties"]["page"] == "/home" and home["properties"]["n"] == 1
    assert home["properties"]["ok"] is True
    assert pricing["properties"]["page"] == "/pricing" and pricing["properties"]["ok"] is False
    assert signup["properties"]["plan"] == "pro" and signup["properties"]["tags"] == ["a", "b"]
    for e in stored:
        props = e["properties"]
        assert props["mp_lib"] == "python"
        assert "token" not in props
        assert "$import" not in props  # /track, not /import
        assert len(props["$insert_id"]) == 32
    by_insert_id(stored)


def test_buffered_consumer_track_batches_and_flush(server: Server, project: ProjectCreds) -> None:
    consumer = BufferedConsumer(max_size=50, **urls(server), request_timeout=10)
    mp = Mixpanel(project.token, consumer=consumer)
    for i in range(120):  # two full batches of 50 sent on the way, 20 left for flush()
        mp.track(f"user-{i % 7}", "Tick", {"i": i})
    assert len(server.export(project)) == 100
    consumer.flush()
    consumer.flush()  # nothing left: must not send anything again

    stored = server.export(project)
    assert len(stored) == 120
    assert sorted(e["properties"]["i"] for e in stored) == list(range(120))
    for e in stored:
        i = e["properties"]["i"]
        assert e["event"] == "Tick"
        assert e["properties"]["distinct_id"] == f"user-{i % 7}"
    by_insert_id(stored)


def test_import_data_with_api_secret(server: Server, project: ProjectCreds) -> None:
    mp = Mixpanel(project.token, consumer=Consumer(**urls(server), request_timeout=10))
    old = 1_500_000_000  # years ago: /track would refuse it, /import must not
    mp.import_data(None, "user-7", "Purchased", old, {"amount": 19.99, "sku": "X-1"}, api_secret=project.secret)
    mp.import_data(None, "user-8", "Purchased", old + 60, {"amount": 5}, api_secret=project.secret)

    stored = sorted(server.export(project), key=lambda e: e["properties"]["time"])
    assert [(e["event"], e["properties"]["distinct_id"], e["properties"]["time"]) for e in stored] == [
        ("Purchased", "user-7", old),
        ("Purchased", "user-8", old + 60),
    ]
    assert stored[0]["properties"]["amount"] == 19.99 and stored[0]["properties"]["sku"] == "X-1"
    assert stored[1]["properties"]["amount"] == 5
    for e in stored:
        assert e["properties"]["$import"] is True
        assert "token" not in e["properties"]
    by_insert_id(stored)


def test_buffered_import_data_with_api_secret(server: Server, project: ProjectCreds) -> None:
    consumer = BufferedConsumer(max_size=50, **urls(server), request_timeout=10)
    mp = Mixpanel(project.token, consumer=consumer)
    base = 1_600_000_000
    for i in range(60):
        mp.import_data(None, f"u{i}", "Imported", base + i, {"i": i}, api_secret=project.secret)
    consumer.flush()

    stored = server.export(project)
    assert len(stored) == 60
    for e in stored:
        i = e["properties"]["i"]
        assert (e["event"], e["properties"]["distinct_id"], e["properties"]["time"]) == ("Imported", f"u{i}", base + i)
        assert e["properties"]["$import"] is True
    assert sorted(e["properties"]["i"] for e in stored) == list(range(60))
    by_insert_id(stored)


@pytest.mark.parametrize("buffered", [False, True], ids=["Consumer", "BufferedConsumer"])
def test_import_data_with_service_account(server: Server, project: ProjectCreds, buffered: bool) -> None:
    username, secret = server.new_service_account(project)
    credentials = ServiceAccountCredentials(username, secret, str(project.id))
    consumer: Consumer | BufferedConsumer
    if buffered:
        consumer = BufferedConsumer(**urls(server), request_timeout=10, credentials=credentials)
    else:
        consumer = Consumer(**urls(server), request_timeout=10, credentials=credentials)
    mp = Mixpanel(project.token, consumer=consumer)
    base = 1_400_000_000
    for i in range(3):
        mp.import_data(None, f"sa-{i}", "Service import", base + i * 3600, {"i": i, "via": "sa"})
    if isinstance(consumer, BufferedConsumer):
        assert server.export(project) == []
        consumer.flush()

    stored = sorted(server.export(project), key=lambda e: e["properties"]["i"])
    assert [(e["event"], e["properties"]["distinct_id"], e["properties"]["time"]) for e in stored] == [
        ("Service import", f"sa-{i}", base + i * 3600) for i in range(3)
    ]
    assert all(e["properties"]["via"] == "sa" and e["properties"]["$import"] is True for e in stored)
    by_insert_id(stored)


def test_service_account_of_another_project_is_refused(server: Server, project: ProjectCreds) -> None:
    other = server.new_project()
    username, secret = server.new_service_account(other)
    # Valid account, but project_id names a project it does not belong to.
    credentials = ServiceAccountCredentials(username, secret, str(project.id))
    mp = Mixpanel(project.token, consumer=Consumer(**urls(server), request_timeout=10, credentials=credentials))
    with pytest.raises(MixpanelException):
        mp.import_data(None, "x", "Nope", 1_500_000_000)
    assert server.export(project) == []
    assert server.export(other) == []


def test_import_data_with_wrong_secret_raises(server: Server, project: ProjectCreds) -> None:
    mp = Mixpanel(project.token, consumer=Consumer(**urls(server), request_timeout=10))
    with pytest.raises(MixpanelException, match="Invalid credentials"):
        mp.import_data(None, "user-1", "Nope", 1_500_000_000, api_secret="not-the-secret")

    wrong_account = ServiceAccountCredentials("nobody", "wrong", str(project.id))
    mp_sa = Mixpanel(project.token, consumer=Consumer(**urls(server), request_timeout=10, credentials=wrong_account))
    with pytest.raises(MixpanelException, match="Invalid credentials"):
        mp_sa.import_data(None, "user-1", "Nope", 1_500_000_000)
    assert server.export(project) == []


def test_wrong_secret_gets_401(server: Server, project: ProjectCreds) -> None:
    """What the SDK's exception stands for: the server's 401, in the form-request shape."""
    response = httpx.post(
        f"{server.url}/import",
        data={"data": '{"event":"x","properties":{"time":1500000000,"distinct_id":"a"}}', "verbose": 1, "ip": 0},
        auth=("not-the-secret", ""),
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json() == {"status": 0, "error": "Invalid credentials"}
