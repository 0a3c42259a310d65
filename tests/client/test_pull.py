"""`eventkeep pull` against a real server: round trips, inclusive days, faults, resume, zones."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from eventkeep.client.pull import INGESTION_PROPERTIES
from tests.client.conftest import run_cli, summary_of, write_ndjson
from tests.client.faultproxy import FaultPlan, FaultProxy, Request
from tests.conftest import ProjectCreds, Server

DAYS = [dt.date(2024, 5, d) for d in range(1, 8)]  # 1..7 May


def _ms(day: dt.date, seconds: float = 0) -> int:
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
    return int((midnight + seconds) * 1000)


def _events() -> list[dict[str, Any]]:
    """Events over 1–7 May, many on the exact edges of days (00:00:00.000 and 23:59:59.999)."""
    events = []
    for d, day in enumerate(DAYS):
        for k in range(40):
            seconds = [0, 86399.999, 43200.5, 3600 * (k % 24) + k][k % 4]
            events.append({
                "event": ["Signup", "Purchase", "View"][k % 3],
                "properties": {
                    "time": _ms(day, seconds),
                    "distinct_id": f"user-{k % 7}",
                    "$insert_id": f"p{d}-{k}",
                    "plan": ["pro", "free"][k % 2],
                    "amount": k * 1.25,
                    "tags": ["x", str(k)],
                    "nested": {"a": k, "b": [1, 2]},
                    "flag": k % 5 == 0,
                    "nothing": None,
                },
            })
    return events


def _import(server: Server, project: ProjectCreds, path: Path, env: dict[str, str]) -> None:
    result = run_cli("import", str(path), "--host", server.url, "--token", project.token, "--json", env=env)
    assert result.returncode == 0, result.stderr


def _pull(server_url: str, project: ProjectCreds, out: Path, *extra: str, env: dict[str, str] | None = None):
    return run_cli("pull", "--host", server_url, "--secret", project.secret, "--from-date", "2024-05-02",
                   "--to-date", "2024-05-05", "-o", str(out), "--json", "--progress", "none", *extra, env=env)


def _read(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _key(event: dict[str, Any]) -> str:
    return json.dumps(event, sort_keys=True)


def test_import_pull_import_pull_round_trips_identically(
    server: Server, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    first, second = server.new_project(), server.new_project()
    events = _events()
    source = tmp_path / "events.ndjson"
    write_ndjson(source, (json.dumps(e).encode() for e in events))
    _import(server, first, source, cache_env)

    out_a = tmp_path / "a.ndjson.gz"
    result = _pull(server.url, first, out_a, "--strip-ingestion-props", "--concurrency", "3", env=cache_env)
    assert result.returncode == 0, result.stderr
    pulled_a = _read(out_a)
    # Inclusive on both ends, each day once: exactly the events of 2–5 May, edges included.
    wanted = [e for e in events if _ms(DAYS[1]) <= e["properties"]["time"] < _ms(DAYS[5])]
    assert len(wanted) == 160
    assert sorted(map(_key, pulled_a)) == sorted(map(_key, wanted))
    assert summary_of(result)["events"] == 160 and summary_of(result)["chunks"] == 4
    assert not Path(str(out_a) + ".parts").exists()

    _import(server, second, out_a, cache_env)
    out_b = tmp_path / "b.ndjson"
    assert _pull(server.url, second, out_b, "--strip-ingestion-props", env=cache_env).returncode == 0
    assert sorted(map(_key, _read(out_b))) == sorted(map(_key, pulled_a))

    # Without stripping, the ingestion-added properties are there (and differ per project).
    raw = tmp_path / "raw.ndjson"
    assert _pull(server.url, second, raw, env=cache_env).returncode == 0
    assert all(set(INGESTION_PROPERTIES) <= set(e["properties"]) for e in _read(raw))


def test_parquet_and_csv_outputs_reimport(server: Server, tmp_path: Path, cache_env: dict[str, str]) -> None:
    first, second = server.new_project(), server.new_project()
    events = _events()
    source = tmp_path / "events.ndjson"
    write_ndjson(source, (json.dumps(e).encode() for e in events))
    _import(server, first, source, cache_env)
    parquet = tmp_path / "out.parquet"
    assert _pull(server.url, first, parquet, "--strip-ingestion-props", env=cache_env).returncode == 0
    table = pq.read_table(parquet)
    assert table.num_rows == 160 and table.column_names[:4] == ["event", "distinct_id", "time", "$insert_id"]
    _import(server, second, parquet, cache_env)  # typed properties survive the JSON column
    again = tmp_path / "again.ndjson"
    assert _pull(server.url, second, again, "--strip-ingestion-props", env=cache_env).returncode == 0
    pulled_first = tmp_path / "first.ndjson"
    assert _pull(server.url, first, pulled_first, "--strip-ingestion-props", env=cache_env).returncode == 0
    assert sorted(map(_key, _read(again))) == sorted(map(_key, _read(pulled_first)))
    csv_out = tmp_path / "out.csv.gz"
    assert _pull(server.url, first, csv_out, "--strip-ingestion-props", env=cache_env).returncode == 0
    with gzip.open(csv_out, "rt") as f:
        header = f.readline().strip().split(",")
        rows = f.read().splitlines()
    assert header[:4] == ["event", "distinct_id", "time", "$insert_id"] and "plan" in header
    assert len(rows) == 160


def test_pull_survives_truncation_terminated_early_429_503_and_drops(
    server: Server, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    project = server.new_project()
    events = _events()
    source = tmp_path / "events.ndjson"
    write_ndjson(source, (json.dumps(e).encode() for e in events))
    _import(server, project, source, cache_env)
    clean = tmp_path / "clean.ndjson"
    assert _pull(server.url, project, clean, env=cache_env).returncode == 0

    plans = {"2024-05-02": ["truncate"], "2024-05-03": ["terminated"], "2024-05-04": ["429", "503"],
             "2024-05-05": ["drop_before", "truncate"]}

    def decide(request: Request) -> str | None:
        # Each day fails in its own ways first (no day twice by truncation: that splits it).
        queue = plans.get((request.query.get("from_date") or [""])[0], [])
        return queue.pop(0) if queue else None

    with FaultProxy(server.url, FaultPlan(decide=decide)) as proxy:
        out = tmp_path / "faulty.ndjson"
        result = _pull(proxy.url, project, out, "--backoff-base", "0.01", "--concurrency", "2", env=cache_env)
        assert proxy.count("GET") == 10
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["retries"] == 6 and summary["requests"] == 10 and summary["split_days"] == []
    assert summary["retry_reasons"] == {"truncated": 3, "429": 1, "503": 1, "network": 1}
    assert sorted(map(_key, _read(out))) == sorted(map(_key, _read(clean)))


def test_a_failed_day_leaves_no_output_and_a_rerun_fetches_only_what_is_missing(
    server: Server, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    project = server.new_project()
    source = tmp_path / "events.ndjson"
    write_ndjson(source, (json.dumps(e).encode() for e in _events()))
    _import(server, project, source, cache_env)
    broken = {"on": True}

    def decide(request: Request) -> str | None:
        return "503" if broken["on"] and request.query.get("from_date") == ["2024-05-04"] else None

    out = tmp_path / "resume.ndjson"
    with FaultProxy(server.url, FaultPlan(decide=decide)) as proxy:
        failed = _pull(proxy.url, project, out, "--max-attempts", "2", "--backoff-base", "0.01", env=cache_env)
        assert failed.returncode == 3
        assert not out.exists() and "2024-05-04" in failed.stderr and "resume" in failed.stderr
        assert sorted(p.name for p in Path(str(out) + ".parts").glob("*.ndjson")) == [
            "2024-05-02.ndjson", "2024-05-03.ndjson", "2024-05-05.ndjson"]
        before = proxy.count("GET")
        broken["on"] = False
        done = _pull(proxy.url, project, out, env=cache_env)
        assert done.returncode == 0, done.stderr
        assert proxy.count("GET") - before == 1  # only the missing day
    assert summary_of(done)["resumed_chunks"] == 3
    assert len(_read(out)) == 160


def test_a_day_that_keeps_failing_is_fetched_hour_by_hour(
    server: Server, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    project = server.new_project()
    source = tmp_path / "events.ndjson"
    events = _events()
    write_ndjson(source, (json.dumps(e).encode() for e in events))
    _import(server, project, source, cache_env)

    def decide(request: Request) -> str | None:
        whole_day = "$time" not in (request.query.get("where") or [""])[0]
        return "truncate" if whole_day and request.query.get("from_date") == ["2024-05-03"] else None

    out = tmp_path / "hourly.ndjson"
    with FaultProxy(server.url, FaultPlan(decide=decide)) as proxy:
        result = _pull(proxy.url, project, out, "--backoff-base", "0.01", "--strip-ingestion-props", env=cache_env)
        hourly = [r for r in proxy.requests if "$time" in (r.query.get("where") or [""])[0]]
    assert result.returncode == 0, result.stderr
    assert summary_of(result)["split_days"] == ["2024-05-03"]
    assert len(hourly) == 24
    wanted = [e for e in events if _ms(DAYS[1]) <= e["properties"]["time"] < _ms(DAYS[5])]
    assert sorted(map(_key, _read(out))) == sorted(map(_key, wanted))


def test_project_time_zone_converts_local_export_times_back_to_utc(
    server: Server, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    project = server.new_project(time_zone="America/New_York")
    registry = server.registry()
    try:
        registry.update_project(project.id, legacy_local_time=True)
    finally:
        registry.close()
    # Around the spring-forward change (10 March 2024), in both offsets.
    times = [_ms(dt.date(2024, 3, 9), 15 * 3600), _ms(dt.date(2024, 3, 10), 4 * 3600 + 30),
             _ms(dt.date(2024, 3, 10), 20 * 3600 + 0.123), _ms(dt.date(2024, 3, 11), 13 * 3600)]
    lines = [b'{"event":"T","properties":{"time":%d,"distinct_id":"u","$insert_id":"tz%d"}}' % (t, i)
             for i, t in enumerate(times)]
    _import(server, project, write_ndjson(tmp_path / "tz.ndjson", lines), cache_env)
    args = ["pull", "--host", server.url, "--secret", project.secret, "--from-date", "2024-03-08",
            "--to-date", "2024-03-12", "--json", "--progress", "none"]
    deadline = time.monotonic() + 10
    while True:  # the server picks up the project's new mode within a second or so
        local = run_cli(*args, "-o", str(tmp_path / "local.ndjson"), "--restart", env=cache_env)
        assert local.returncode == 0, local.stderr
        local_times = sorted(e["properties"]["time"] for e in _read(tmp_path / "local.ndjson"))
        if local_times != times or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert local_times == sorted(t - 5 * 3600000 for t in times[:2]) + sorted(t - 4 * 3600000 for t in times[2:])
    utc = run_cli(*args, "-o", str(tmp_path / "utc.ndjson"), "--project-time-zone", "America/New_York", env=cache_env)
    assert utc.returncode == 0, utc.stderr
    assert sorted(e["properties"]["time"] for e in _read(tmp_path / "utc.ndjson")) == times


def test_pull_with_a_service_account_and_to_stdout(server: Server, tmp_path: Path, cache_env: dict[str, str]) -> None:
    project = server.new_project()
    user, secret = server.new_service_account(project)
    source = tmp_path / "events.ndjson"
    write_ndjson(source, (json.dumps(e).encode() for e in _events()))
    _import(server, project, source, cache_env)
    env = {**cache_env, "EVENTKEEP_SERVICE_ACCOUNT": f"{user}:{secret}", "EVENTKEEP_PROJECT_ID": str(project.id),
           "EVENTKEEP_HOST": server.url}
    result = run_cli("pull", "--from-date", "2024-05-07", "--to-date", "2024-05-07", "--event", "Signup",
                     "--where", 'properties["plan"] == "pro"', "--progress", "none", env=env)
    assert result.returncode == 0, result.stderr
    pulled = [json.loads(line) for line in result.stdout.splitlines()]
    assert pulled and all(e["event"] == "Signup" and e["properties"]["plan"] == "pro" for e in pulled)
    token_only = run_cli("pull", "--host", server.url, "--from-date", "2024-05-07", "--to-date", "2024-05-07",
                         env={**cache_env, "EVENTKEEP_TOKEN": project.token})
    assert token_only.returncode == 2 and "cannot export" in token_only.stderr
