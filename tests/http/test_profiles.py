"""/engage and /groups over HTTP (spec §4), read back through GET /api/2.0/engage."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from mixpanel import Consumer, Mixpanel, MixpanelException

from eventkeep.http.responses import PIXEL_GIF
from tests.conftest import ProjectCreds, Server, start_server

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
T0_TEXT = "2023-11-14T22:13:20"


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def people(project: ProjectCreds, op: str, value: Any, distinct_id: Any = "u1", **extra: Any) -> dict[str, Any]:
    item = {"$token": project.token, "$distinct_id": distinct_id, "$time": T0, op: value}
    item.update(extra)
    return item


def grp(project: ProjectCreds, op: str, value: Any, group_id: Any = "acme", key: str = "company",
        **extra: Any) -> dict[str, Any]:
    item = {"$token": project.token, "$group_key": key, "$group_id": group_id, "$time": T0, op: value}
    item.update(extra)
    return item


def profile(server: Server, project: ProjectCreds, distinct_id: str, group_key: str | None = None) -> Any:
    """The stored properties of one profile, or None, through the engage query API."""
    params = {"distinct_id": distinct_id}
    if group_key is not None:
        params["data_group_id"] = group_key
    r = httpx.get(f"{server.url}/api/2.0/engage", params=params, auth=(project.secret, ""), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    if not body["results"]:
        return None
    [result] = body["results"]
    assert result["$distinct_id"] == distinct_id
    return result["$properties"]


def post(client: httpx.Client, path: str, updates: Any, **params: str) -> httpx.Response:
    return client.post(path, params=params, json=updates)


# -- operations, in order, within and across requests --------------------------------------


def test_every_operation_in_one_request_applies_in_order(
    server: Server, project: ProjectCreds, client: httpx.Client
) -> None:
    updates = [
        people(project, "$set", {"name": "Ann", "plan": "free", "$email": "ann@example.com"}),
        people(project, "$set_once", {"plan": "pro", "first_seen": "2023-11-14"}),
        people(project, "$add", {"visits": 1}),
        people(project, "$add", {"visits": 2, "credit": -1.5}),
        people(project, "$union", {"tags": ["a", "b", "a"]}),
        people(project, "$union", {"tags": ["b", "c"]}),
        people(project, "$append", {"items": "arm"}),
        people(project, "$append", {"items": "leg"}),
        people(project, "$remove", {"items": "arm"}),
        people(project, "$unset", ["$email"]),
    ]
    r = post(client, "/engage", updates, verbose="1")
    assert r.status_code == 200 and r.json() == {"status": 1, "error": None}
    assert profile(server, project, "u1") == {
        "$last_seen": T0_TEXT,
        "name": "Ann",
        "plan": "free",
        "first_seen": "2023-11-14",
        "visits": 3,
        "credit": -1.5,
        "tags": ["a", "b", "c"],
        "items": ["leg"],
    }


def test_operations_across_requests_and_delete(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    assert post(client, "/engage/", [people(project, "$set", {"n": 1})]).text == "1"
    assert post(client, "/engage/", [people(project, "$add", {"n": 10})]).text == "1"
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "n": 11}
    assert post(client, "/engage", [people(project, "$delete", "")]).text == "1"
    assert profile(server, project, "u1") is None
    # Removing from, or unsetting on, a profile that does not exist creates nothing.
    assert post(client, "/engage", [people(project, "$remove", {"n": 1}), people(project, "$unset", ["n"])]).text == "1"
    assert profile(server, project, "u1") is None
    # Deleted then recreated within one request: the last state wins.
    r = post(client, "/engage", [people(project, "$set", {"a": 1}), people(project, "$delete", None),
                                 people(project, "$set", {"b": 2})])
    assert r.text == "1"
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "b": 2}


def test_ignore_time_and_time_in_milliseconds(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    post(client, "/engage", [people(project, "$set", {"a": 1}, distinct_id="quiet", **{"$ignore_time": True})])
    assert profile(server, project, "quiet") == {"a": 1}
    post(client, "/engage", [people(project, "$set", {"a": 1}, distinct_id="ms", **{"$time": T0 * 1000 + 999})])
    assert profile(server, project, "ms") == {"$last_seen": T0_TEXT, "a": 1}


def test_profiles_belong_to_the_project_their_token_names(server: Server, client: httpx.Client) -> None:
    a, b = server.new_project(), server.new_project()
    r = post(client, "/engage", [people(a, "$set", {"p": "a"}), people(b, "$set", {"p": "b"}),
                                 people(a, "$add", {"n": 1})])
    assert r.text == "1"
    assert profile(server, a, "u1") == {"$last_seen": T0_TEXT, "p": "a", "n": 1}
    assert profile(server, b, "u1") == {"$last_seen": T0_TEXT, "p": "b"}


def test_credentials_name_the_project_of_updates_without_token(
    server: Server, project: ProjectCreds, client: httpx.Client
) -> None:
    update = people(project, "$set", {"via": "auth"})
    del update["$token"]
    r = client.post("/engage", params={"verbose": "1"}, json=[update], auth=(project.secret, ""))
    assert r.json() == {"status": 1, "error": None}
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "via": "auth"}


def test_concurrent_requests_lose_no_update(server: Server, project: ProjectCreds) -> None:
    failures: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in range(20):
                r = c.post("/engage", json=[people(project, "$add", {"n": 1}),
                                            people(project, "$append", {"seen": f"{n}-{i}"})])
                if r.text != "1":
                    failures.append(r.text)
                # Events share the writer: interleave some, they must all land too.
                event = {"event": "tick", "properties": {"token": project.token, "distinct_id": "u1",
                                                         "$insert_id": f"w{n}i{i}"}}
                if c.post("/track", data={"data": json.dumps(event)}).text != "1":
                    failures.append("track")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    stored = profile(server, project, "u1")
    assert stored["n"] == 240
    assert sorted(stored["seen"]) == sorted(f"{n}-{i}" for n in range(12) for i in range(20))
    assert len(server.export(project)) == 240


def test_profile_limit_refusals_come_from_the_store(
    server: Server, project: ProjectCreds, client: httpx.Client
) -> None:
    many = {f"p{i}": i for i in range(1999)}  # with $last_seen: 2000 properties, the limit
    assert post(client, "/engage", [people(project, "$set", many)]).text == "1"
    batch = [people(project, "$set", {"one_more": 1}), people(project, "$set", {"p0": "changed"})]
    r = post(client, "/engage", batch, verbose="1")
    assert r.json() == {
        "status": 0,
        "error": "some data points in the request failed validation: "
                 "record 0: Engage API error: profile, must have at most 2000 properties",
    }
    stored = profile(server, project, "u1")
    assert len(stored) == 2000 and "one_more" not in stored and stored["p0"] == "changed"


def test_a_200_means_committed(tmp_path: Any) -> None:
    own = start_server(tmp_path)
    try:
        project = own.new_project()
        with httpx.Client(base_url=own.url, timeout=30) as c:
            assert post(c, "/engage", [people(project, "$set", {"a": 1})]).text == "1"
            assert post(c, "/groups", [grp(project, "$add", {"n": 2})]).text == "1"
        own.kill()  # no clean shutdown, no checkpoint
        own.start()
        assert profile(own, project, "u1") == {"$last_seen": T0_TEXT, "a": 1}
        assert profile(own, project, "acme", "company") == {"$last_seen": T0_TEXT, "n": 2}
    finally:
        own.stop()


# -- groups --------------------------------------------------------------------------------


def test_group_operations(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    updates = [
        grp(project, "$set", {"name": "Acme", "tier": "gold"}),
        grp(project, "$set_once", {"tier": "silver", "founded": 1999}),
        grp(project, "$union", {"domains": ["acme.com", "acme.io"]}),
        grp(project, "$remove", {"domains": "acme.io"}),
        grp(project, "$add", {"seats": 5}),
        grp(project, "$unset", ["tier"]),
        grp(project, "$set", {"name": "Other"}, group_id=42),
        grp(project, "$set", {"name": "Same id, other key"}, key="team"),
    ]
    r = post(client, "/groups/", updates, verbose="1")
    assert r.json() == {"status": 1, "error": None}
    assert profile(server, project, "acme", "company") == {
        "$last_seen": T0_TEXT, "name": "Acme", "founded": 1999, "domains": ["acme.com"], "seats": 5,
    }
    assert profile(server, project, "42", "company") == {"$last_seen": T0_TEXT, "name": "Other"}
    assert profile(server, project, "acme", "team") == {"$last_seen": T0_TEXT, "name": "Same id, other key"}
    # A group is not a user, even with the same id.
    assert profile(server, project, "acme") is None
    assert post(client, "/groups", [grp(project, "$delete", "")]).text == "1"
    assert profile(server, project, "acme", "company") is None
    assert profile(server, project, "acme", "team") is not None


def test_groups_refuse_append(project: ProjectCreds, client: httpx.Client) -> None:
    r = post(client, "/groups", [grp(project, "$append", {"x": 1})], verbose="2")
    assert r.status_code == 400
    assert r.json() == {"error": "Groups API error: $append, not supported in group profiles", "status": 0}


def test_group_update_without_group_id(project: ProjectCreds, client: httpx.Client) -> None:
    update = grp(project, "$set", {"a": 1})
    del update["$group_id"]
    r = post(client, "/groups", [update], verbose="1")
    assert r.status_code == 200
    assert r.json() == {"status": 0, "error": "Groups API error: $group_id, missing or empty"}


# -- refusals and answer modes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"$distinct_id": None}, "$distinct_id, missing or empty"),
        ({"$distinct_id": ""}, "$distinct_id, missing or empty"),
        ({"$token": "not-a-token"}, "$token, not a known project token"),
        ({"$token": None}, "$token, missing or empty"),
        ({"$add": {"n": 1}}, "update, more than one operation ($set, $add): send one update per operation"),
        ({"$set": ["a"]}, "$set, must be an object of property names to values"),
    ],
)
def test_bad_update_messages(
    server: Server, project: ProjectCreds, client: httpx.Client, change: dict[str, Any], message: str
) -> None:
    update = people(project, "$set", {"a": 1})
    for key, value in change.items():
        if value is None:
            del update[key]
        else:
            update[key] = value
    r = post(client, "/engage", [update], verbose="2")
    assert r.status_code == 400
    assert r.json() == {"error": f"Engage API error: {message}", "status": 0}
    r = post(client, "/engage", [update], verbose="1")
    assert r.status_code == 200 and r.json() == {"status": 0, "error": f"Engage API error: {message}"}
    r = post(client, "/engage", [update])
    assert r.status_code == 200 and r.text == "0"
    assert profile(server, project, "u1") is None


@pytest.mark.parametrize(
    ("op", "value", "message"),
    [
        ("$add", {"n": "1"}, "$add, 'n' must be a number"),
        ("$union", {"t": "x"}, "$union, 't' must be a non-empty list of strings or numbers"),
        ("$unset", "name", "$unset, must be a non-empty list of property names"),
        ("$append", ["x"], "$append, must be an object of property names to values"),
    ],
)
def test_wrong_value_types(project: ProjectCreds, client: httpx.Client, op: str, value: Any, message: str) -> None:
    r = post(client, "/engage", [people(project, op, value)], verbose="1")
    assert r.json() == {"status": 0, "error": f"Engage API error: {message}"}


def test_partly_valid_batch(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    batch = [people(project, "$set", {"a": 1}), people(project, "$add", {"n": "x"}),
             people(project, "$add", {"n": 2})]
    # "1: One or more objects provided are valid" (§3.3); the valid ones are stored.
    assert post(client, "/engage", batch).text == "1"
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "a": 1, "n": 2}
    r = post(client, "/engage", batch, verbose="1")
    assert r.json() == {
        "status": 0,
        "error": "some data points in the request failed validation: "
                 "record 1: Engage API error: $add, 'n' must be a number",
    }
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "a": 1, "n": 4}


def test_request_level_errors_carry_the_prefix(client: httpx.Client) -> None:
    r = client.post("/engage", params={"verbose": "2"}, content=b"[not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["status"] == 0 and r.json()["error"].startswith("Engage API error: unable to parse request body")
    r = client.post("/groups", params={"verbose": "1"}, content=b"")
    assert r.status_code == 200
    assert r.json() == {"status": 0, "error": "Groups API error: request body is empty"}


def test_more_than_2000_updates_are_refused(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    batch = [people(project, "$add", {"n": 1}) for _ in range(2001)]
    r = post(client, "/engage", batch, verbose="1")
    assert r.status_code == 413
    assert r.json() == {"status": 0, "error": "Engage API error: request exceeds max limit of 2000 records"}
    assert profile(server, project, "u1") is None
    assert post(client, "/engage", batch[:2000]).text == "1"
    assert profile(server, project, "u1")["n"] == 2000


# -- request encodings ---------------------------------------------------------------------


def test_form_post_base64_array(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    body = "data=" + b64([people(project, "$set", {"a": 1}), people(project, "$union", {"t": ["x"]})])
    r = client.post("/engage/", params={"ip": "1"}, content=body, headers=FORM)
    assert r.status_code == 200 and r.text == "1"
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "a": 1, "t": ["x"]}


def test_form_post_base64_with_plus_sent_as_space(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    # mixpanel-node posts base64 unescaped, so '+' arrives as a space (spec §3.1).
    update = people(project, "$set", {"k": ">>>"})  # '>>>' base64-encodes with '+'
    encoded = b64(update)
    assert "+" in encoded
    r = client.post("/engage", content="data=" + encoded, headers=FORM)
    assert r.text == "1"
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "k": ">>>"}


def test_form_post_single_json_object_with_verbose_in_body(
    server: Server, project: ProjectCreds, client: httpx.Client
) -> None:
    r = client.post("/groups", data={"data": json.dumps(grp(project, "$set", {"a": 1})), "verbose": "1"})
    assert r.json() == {"status": 1, "error": None}
    assert profile(server, project, "acme", "company") == {"$last_seen": T0_TEXT, "a": 1}


def test_get_with_base64_data(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/engage", params={"data": b64(people(project, "$set", {"a": 1}))})
    assert r.text == "1"
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "a": 1}


def test_gzip_json_and_gzip_form(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    body = gzip.compress(json.dumps([people(project, "$add", {"n": 1})]).encode())
    r = client.post("/engage", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.text == "1"
    body = gzip.compress(("data=" + b64([people(project, "$add", {"n": 1})])).encode())
    r = client.post("/engage", content=body, headers={**FORM, "Content-Encoding": "gzip"})
    assert r.text == "1"
    assert profile(server, project, "u1")["n"] == 2


def test_img_and_callback(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/engage", params={"data": b64(people(project, "$set", {"a": 1})), "img": "1"})
    assert r.headers["content-type"] == "image/gif" and r.content == PIXEL_GIF
    r = client.get("/engage", params={"data": b64(people(project, "$add", {"n": 1})), "callback": "cb"})
    assert r.headers["content-type"].startswith("text/javascript") and r.text == "cb(1);"
    bad = people(project, "$add", {"n": "x"})
    r = client.get("/engage", params={"data": b64(bad), "callback": "cb", "verbose": "1"})
    assert r.text == 'cb({"status":0,"error":"Engage API error: $add, \'n\' must be a number"});'
    assert profile(server, project, "u1") == {"$last_seen": T0_TEXT, "a": 1, "n": 1}


# -- the engage query API ------------------------------------------------------------------


def test_query_api_needs_the_secret(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    r = client.get("/api/2.0/engage", params={"distinct_id": "u1"})
    assert r.status_code == 401
    assert r.json() == {"request": "/api/2.0/engage", "error": "Unauthorized: missing credentials"}
    r = client.get("/api/2.0/engage", params={"distinct_id": "u1"}, auth=(project.token, ""))
    assert r.status_code == 401 and r.json()["error"] == "Invalid credentials"
    r = client.get("/api/2.0/engage", auth=(project.secret, ""))
    assert r.status_code == 400
    assert r.json()["error"] == "'distinct_id' or 'distinct_ids' is required: this server looks profiles up by id only"


def test_query_api_many_ids_by_post_form(server: Server, project: ProjectCreds, client: httpx.Client) -> None:
    post(client, "/engage", [people(project, "$set", {"i": 1}, distinct_id="a"),
                             people(project, "$set", {"i": 2}, distinct_id="b")])
    r = client.post("/api/2.0/engage/", data={"distinct_ids": json.dumps(["b", "nobody", "a"])},
                    auth=(project.secret, ""))
    body = r.json()
    assert body["status"] == "ok" and body["total"] == 2
    assert body["results"] == [
        {"$distinct_id": "b", "$properties": {"$last_seen": T0_TEXT, "i": 2}},
        {"$distinct_id": "a", "$properties": {"$last_seen": T0_TEXT, "i": 1}},
    ]


# -- the official Python SDK ---------------------------------------------------------------


def sdk(server: Server, project: ProjectCreds) -> Mixpanel:
    consumer = Consumer(events_url=f"{server.url}/track", people_url=f"{server.url}/engage",
                        groups_url=f"{server.url}/groups", import_url=f"{server.url}/import",
                        request_timeout=10)
    return Mixpanel(project.token, consumer=consumer)


def pop_last_seen(props: dict[str, Any], before: float, after: float) -> dict[str, Any]:
    seen = datetime.strptime(props.pop("$last_seen"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    assert int(before) <= seen <= after
    return props


def test_python_sdk_people(server: Server, project: ProjectCreds) -> None:
    mp = sdk(server, project)
    before = time.time()
    mp.people_set("user-7", {"$name": "Ann", "plan": "free"})
    mp.people_set_once("user-7", {"plan": "pro", "source": "ad"})
    mp.people_increment("user-7", {"logins": 1})
    mp.people_increment("user-7", {"logins": 2, "balance": -5})
    mp.people_append("user-7", {"pages": "/home"})
    mp.people_append("user-7", {"pages": "/pricing"})
    mp.people_union("user-7", {"tags": ["a", "b"]})
    mp.people_union("user-7", {"tags": ["b", "c"]})
    mp.people_remove("user-7", {"tags": "a"})
    mp.people_unset("user-7", ["source"])
    mp.people_track_charge("user-7", 9.5, {"sku": "x1"})
    after = time.time()
    stored = profile(server, project, "user-7")
    charge = stored.pop("$transactions")
    assert pop_last_seen(stored, before, after) == {
        "$name": "Ann", "plan": "free", "logins": 3, "balance": -5,
        "pages": ["/home", "/pricing"], "tags": ["b", "c"],
    }
    assert [{k: v for k, v in c.items() if k != "$time"} for c in charge] == [{"sku": "x1", "$amount": 9.5}]

    mp.people_set(42, {"n": 1})
    assert pop_last_seen(profile(server, project, "42"), before, time.time()) == {"n": 1}

    mp.people_delete("user-7")
    assert profile(server, project, "user-7") is None


def test_python_sdk_meta_ignore_time(server: Server, project: ProjectCreds) -> None:
    sdk(server, project).people_set("u9", {"a": 1}, meta={"$ignore_time": True, "$ip": "0"})
    assert profile(server, project, "u9") == {"a": 1}


def test_python_sdk_groups(server: Server, project: ProjectCreds) -> None:
    mp = sdk(server, project)
    before = time.time()
    mp.group_set("company", "Acme Inc.", {"industry": "rockets", "size": 10})
    mp.group_set_once("company", "Acme Inc.", {"industry": "anvils", "hq": "Desert"})
    mp.group_union("company", "Acme Inc.", {"products": ["rocket", "anvil"]})
    mp.group_remove("company", "Acme Inc.", {"products": "anvil"})
    mp.group_unset("company", "Acme Inc.", ["size"])
    after = time.time()
    stored = profile(server, project, "Acme Inc.", "company")
    assert pop_last_seen(stored, before, after) == {"industry": "rockets", "hq": "Desert", "products": ["rocket"]}
    mp.group_delete("company", "Acme Inc.")
    assert profile(server, project, "Acme Inc.", "company") is None


def test_python_sdk_sees_refusals(server: Server, project: ProjectCreds) -> None:
    mp = sdk(server, project)
    with pytest.raises(MixpanelException, match=r"Engage API error: \$distinct_id, missing or empty"):
        mp.people_set("", {"a": 1})
    with pytest.raises(MixpanelException, match=r"Engage API error: \$add, 'n' must be a number"):
        mp.people_increment("u1", {"n": "one"})
    with pytest.raises(MixpanelException, match=r"Groups API error: \$group_id, missing or empty"):
        mp.group_set("company", "", {"a": 1})
    assert profile(server, project, "u1") is None
