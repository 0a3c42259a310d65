"""mixpanel-utils 2.x (`MixpanelUtils`), repointed at a local eventkeep server.

mixpanel-utils has no host argument: its base URLs are reassigned after construction. It
posts strict imports as `POST /import?strict=1` with a raw JSON array of up to 2000 events
and Basic `<secret>:`, from a thread pool; it logs failures instead of raising, so every test
checks what the server stored and that the library logged no failure.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from mixpanel_utils import MixpanelUtils

from tests.conftest import ProjectCreds, Server


def repoint(mpu: MixpanelUtils, server: Server) -> MixpanelUtils:
    mpu.import_api = server.url
    mpu.raw_api = f"{server.url}/api"
    mpu.formatted_api = f"{server.url}/api"
    return mpu


def utils_for(server: Server, project: ProjectCreds) -> MixpanelUtils:
    return repoint(MixpanelUtils(project.secret, token=project.token, pool_size=4, max_retries=1), server)


def generated(count: int, base_time: int) -> list[dict[str, Any]]:
    return [
        {
            "event": f"Event {i % 5}",
            "properties": {
                "time": base_time + i,
                "distinct_id": f"user-{i % 97}",
                "$insert_id": uuid.uuid4().hex,
                "i": i,
                "plan": ["free", "pro", "team"][i % 3],
            },
        }
        for i in range(count)
    ]


def stored_count(server: Server, project: ProjectCreds) -> int:
    """Events the server accepted for the project (duplicates included), from /stats."""
    stats = httpx.get(f"{server.url}/stats", timeout=10).json()
    return int(stats.get(str(project.id), {}).get("stored", 0))


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("mixpanel_utils") and r.levelno >= logging.WARNING]


@pytest.fixture(autouse=True)
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Path:
    monkeypatch.chdir(tmp_path)  # mixpanel-utils writes invalid_events.txt, import_backup.txt here
    caplog.set_level(logging.WARNING, logger="mixpanel_utils")
    return tmp_path


def test_import_10000_events_then_again_is_deduplicated(
    server: Server, project: ProjectCreds, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = int(time.time()) - 30 * 86400
    events = generated(10_000, base)
    mpu = utils_for(server, project)

    mpu.import_events(events, timezone_offset=0)
    assert failures_logged(caplog) == []
    assert not (tmp_path / "import_backup.txt").exists()
    assert not (tmp_path / "invalid_events.txt").exists()
    stored = server.export(project)
    assert len(stored) == 10_000
    sent = {e["properties"]["$insert_id"]: e for e in events}
    seen: set[str] = set()
    for got in stored:
        props = got["properties"]
        insert_id = props["$insert_id"]
        assert insert_id not in seen, f"stored twice: {insert_id}"
        seen.add(insert_id)
        want = sent[insert_id]
        assert got["event"] == want["event"]
        assert props["distinct_id"] == want["properties"]["distinct_id"]
        assert props["time"] == want["properties"]["time"]
        assert props["i"] == want["properties"]["i"] and props["plan"] == want["properties"]["plan"]
        assert props["$import"] is True
        assert "token" not in props
    assert seen == set(sent)
    assert stored_count(server, project) == 10_000

    # The same 10,000 again: the server takes them (so the test proves they arrived) ...
    mpu.import_events(events, timezone_offset=0)
    assert failures_logged(caplog) == []
    assert stored_count(server, project) == 20_000
    # ... and deduplication on (event, distinct_id, time, $insert_id) keeps one copy of each.
    again = server.export(project)
    assert len(again) == 10_000
    assert {e["properties"]["$insert_id"] for e in again} == set(sent)


def test_import_with_service_account(server: Server, project: ProjectCreds, caplog: pytest.LogCaptureFixture) -> None:
    username, secret = server.new_service_account(project)
    mpu = repoint(
        MixpanelUtils(secret, token=project.token, service_account_username=username, project_id=project.id, pool_size=2, max_retries=1),
        server,
    )
    events = generated(2500, int(time.time()) - 86400)  # two requests: 2000 + 500
    mpu.import_events(events, timezone_offset=0)
    assert failures_logged(caplog) == []
    stored = server.export(project)
    assert len(stored) == 2500
    assert sorted(e["properties"]["i"] for e in stored) == list(range(2500))


BLANK_NAME, BAD_INSERT_ID, FUTURE = 7, 42, 99


def batch_with_three_invalid(now: int) -> list[dict[str, Any]]:
    events = generated(100, now - 7 * 86400)
    events[BLANK_NAME]["event"] = ""
    events[BAD_INSERT_ID]["properties"]["$insert_id"] = "ajs-next-1:2"
    events[FUTURE]["properties"]["time"] = now + 86400  # a day ahead: beyond the hour allowed
    return events


def expected_failures(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def record(index: int, field: str, message: str) -> dict[str, Any]:
        insert_id = events[index]["properties"]["$insert_id"]
        return {"index": index, "insert_id": insert_id, "$insert_id": insert_id, "field": field, "message": message}

    return [
        record(BLANK_NAME, "event", "'event' must not be missing or blank"),
        record(
            BAD_INSERT_ID,
            "$insert_id",
            "'$insert_id' is invalid: must only contain alphanumeric or hyphen '-' characters",
        ),
        record(FUTURE, "properties.time", "'properties.time' is invalid: must not be in the future"),
    ]


def test_batch_with_three_invalid_events_stores_the_97_others(
    server: Server, project: ProjectCreds, caplog: pytest.LogCaptureFixture
) -> None:
    events = batch_with_three_invalid(int(time.time()))
    utils_for(server, project).import_events(events, timezone_offset=0)

    # mixpanel-utils logs the 400 (it does not raise); the valid 97 are stored.
    logged = "\n".join(failures_logged(caplog))
    assert "HTTP Error Code: 400" in logged
    stored = server.export(project)
    assert len(stored) == 97
    bad = {BLANK_NAME, BAD_INSERT_ID, FUTURE}
    assert sorted(e["properties"]["i"] for e in stored) == [i for i in range(100) if i not in bad]
    for got in stored:
        want = events[got["properties"]["i"]]
        assert got["event"] == want["event"]
        assert got["properties"]["$insert_id"] == want["properties"]["$insert_id"]
        assert got["properties"]["time"] == want["properties"]["time"]


def test_strict_import_answer_names_exactly_the_invalid_events(server: Server, project: ProjectCreds) -> None:
    """The same batch, posted the way mixpanel-utils posts it, to read the server's answer."""
    events = batch_with_three_invalid(int(time.time()))
    for e in events:
        e["properties"]["token"] = project.token  # as mixpanel-utils adds it
    response = httpx.post(
        f"{server.url}/import",
        params={"strict": 1},
        json=events,
        auth=(project.secret, ""),
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "code": 400,
        "error": "some data points in the request failed validation",
        "failed_records": expected_failures(events),
        "num_records_imported": 97,
        "status": "Bad Request",
    }
    assert len(server.export(project)) == 97


STRIPPED = {"$import", "$mp_api_endpoint", "$mp_api_timestamp_ms", "$mp_event_size", "mp_processing_time_ms"}


@pytest.mark.parametrize("gzip_header", [False, True])
def test_export_events_returns_exactly_what_was_imported(
    server: Server, project: ProjectCreds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gzip_header: bool
) -> None:
    """Issue [2] #1: values come back byte-for-byte as JSON had them, each event once."""
    monkeypatch.chdir(tmp_path)
    base = 1_700_006_400  # 2023-11-15T00:00:00Z
    sent = [
        {"event": "Purchased", "properties": {
            "time": base + i, "distinct_id": f"u{i}", "$insert_id": f"exp-{i}",
            "big": 123456789012345678901234567890 + i, "ratio": 0.1 + i, "neg": -i, "flag": i % 2 == 0,
            "nothing": None, "text": "ünïcødé ✓ \"quoted\" \\ " + "😀" * (i % 3), "list": [1, "two", None, [3]],
            "nested": {"a": {"b": [True, 1.5e300]}}}}
        for i in range(50)
    ]
    response = httpx.post(f"{server.url}/import", json=sent, auth=(project.secret, ""), timeout=30)
    assert response.status_code == 200, response.text
    # Re-sending the same events must not make the export show any of them twice.
    assert httpx.post(f"{server.url}/import", json=sent, auth=(project.secret, ""), timeout=30).status_code == 200

    mpu = utils_for(server, project)
    mpu.export_events("out.json", {"from_date": "2023-11-15", "to_date": "2023-11-15"}, add_gzip_header=gzip_header)
    import json

    exported = json.loads((tmp_path / "out.json").read_text())
    assert len(exported) == len(sent)
    by_id = {e["properties"]["$insert_id"]: e for e in exported}
    assert set(by_id) == {e["properties"]["$insert_id"] for e in sent}
    for original in sent:
        got = by_id[original["properties"]["$insert_id"]]
        assert got["event"] == original["event"]
        kept = {k: v for k, v in got["properties"].items() if k not in STRIPPED}
        assert kept == original["properties"]
        for key, value in original["properties"].items():  # same JSON types, not just equal values
            assert type(kept[key]) is type(value)
