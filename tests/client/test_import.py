"""`eventkeep import` against a real server: volume, faults, kills, refusals, formats."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eventkeep.ingest import validate
from tests.client.conftest import (
    DAY_S,
    NOW_S,
    assert_exactly_once,
    event_line,
    run_cli,
    stream_insert_ids,
    summary_of,
    valid_lines,
    write_ndjson,
)
from tests.client.faultproxy import FaultPlan, FaultProxy
from tests.conftest import ROOT, ProjectCreds, Server, start_server


@pytest.mark.slow
def test_a_million_gzip_events_arrive_exactly_once(tmp_path: Path, cache_env: dict[str, str]) -> None:
    path = write_ndjson(tmp_path / "million.ndjson.gz", valid_lines(1_000_000))
    server = start_server(tmp_path / "own")  # its own store: the shared one stays small
    try:
        project = server.new_project()
        started = time.monotonic()
        result = run_cli("import", str(path), "--host", server.url, "--token", project.token, "--json",
                         "--progress", "lines", "--progress-interval", "5", env=cache_env, timeout=900)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        summary = summary_of(result)
        assert (summary["read"], summary["sent"], summary["imported"]) == (1_000_000, 1_000_000, 1_000_000)
        assert (summary["rejected"], summary["failed"], summary["failed_batches"]) == (0, 0, 0)
        assert summary["requests"] == 500  # 2000 events per request
        assert "events/s" in result.stderr and "eventkeep import:" in result.stderr
        assert_exactly_once(server, project, 1_000_000)
        print(f"1M events imported in {elapsed:.1f}s ({summary['events_per_s']:,.0f} events/s by the tool's clock)")
    finally:
        server.stop()


def test_faults_429_503_and_dropped_connections_lose_and_duplicate_nothing(
    server: Server, project: ProjectCreds, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    n = 50_000
    path = write_ndjson(tmp_path / "50k.ndjson.gz", valid_lines(n, prefix="f"))
    with FaultProxy(server.url, FaultPlan(rate=0.2, seed=11, retry_after=1)) as proxy:
        result = run_cli("import", str(path), "--host", proxy.url, "--token", project.token, "--json",
                         "--batch-size", "500", "--concurrency", "10", "--backoff-base", "0.01",
                         "--backoff-max", "0.2", "--max-attempts", "25", env=cache_env)
        posts = proxy.count("POST", "/import")
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    injected = proxy.faults
    assert set(injected) == {"429_retry_after", "429", "503", "drop_before", "drop_after"}, injected
    assert summary["imported"] == summary["sent"] == n
    # Every injected fault was seen, counted and retried once; nothing else was.
    assert summary["retries"] == sum(injected.values())
    reasons = summary["retry_reasons"]
    assert reasons["429"] == injected["429"] + injected["429_retry_after"]
    assert reasons["503"] == injected["503"]
    network = sum(v for k, v in reasons.items() if k.startswith("network"))
    assert network == injected["drop_before"] + injected["drop_after"]
    assert summary["requests"] == posts == 100 + sum(injected.values())
    # While a Retry-After said to wait, no worker sent anything.
    assert proxy.early == []
    assert f"retried: {summary['retries']}" in result.stderr
    assert_exactly_once(server, project, n, prefix="f")


def _kill_input(path: Path, n: int) -> tuple[set[int], set[int]]:
    """Mostly valid events, with every 997th one missing its time; returns (good, bad) indexes."""
    bad = {i for i in range(n) if i % 997 == 500}

    def lines():
        for i in range(n):
            if i in bad:
                yield b'{"event":"E","properties":{"distinct_id":"u","$insert_id":"b%07d"}}' % i
            else:
                yield event_line(i, NOW_S - 2 * DAY_S, "k")

    write_ndjson(path, lines())
    return set(range(n)) - bad, bad


def _position(checkpoint: Path) -> int:
    try:
        return int(json.loads(checkpoint.read_text())["position"]["record"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_killed_three_times_at_random_then_rerun_imports_exactly_once(
    server: Server, project: ProjectCreds, tmp_path: Path
) -> None:
    n = 120_000
    path = tmp_path / "kill.ndjson.gz"
    good, bad = _kill_input(path, n)
    checkpoint = tmp_path / "job.ckpt"
    rejects = tmp_path / "rejects.ndjson"
    args = ["import", str(path), "--host", server.url, "--token", project.token, "--checkpoint", str(checkpoint),
            "--rejects", str(rejects), "--batch-size", "1000", "--concurrency", "4", "--json", "--progress", "none"]
    rng = random.Random()
    positions = [0]
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-m", "eventkeep", *args], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for progress beyond the last kill (so each kill lands mid-import however
        # slow the machine), then a random moment more, then kill.
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline and _position(checkpoint) <= positions[-1]:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        process.kill()  # SIGKILL: no chance to save anything
        process.wait()
        positions.append(_position(checkpoint))
    assert 0 < positions[1] < positions[2] < positions[3] < n, f"kills did not land mid-import: {positions}"
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr  # everything delivered, some refused
    summary = summary_of(result)
    assert summary["resumed_from"] is not None
    # Totals over the four runs are exact: each record counted once, in the run that finished it.
    assert (summary["read"], summary["imported"], summary["rejected"], summary["failed"]) == (
        n, len(good), len(bad), 0
    )
    stored = Counter(stream_insert_ids(server, project))
    assert max(stored.values()) == 1
    assert set(stored) == {b"k%07d" % i for i in good}
    entries = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted(e["index"] for e in entries) == sorted(bad)  # each refusal exactly once
    assert {e["message"] for e in entries} == {validate.TIME_MESSAGE}
    assert json.loads(checkpoint.read_text())["complete"] is True
    again = run_cli(*args)  # the job is done: a re-run sends nothing, and reports the job as it ended
    assert again.returncode == 1 and "nothing to do" in again.stderr and summary_of(again)["requests"] == 0


def _post_one(server: Server, project: ProjectCreds, line: bytes) -> dict[str, object]:
    response = httpx.post(f"{server.url}/import", params={"strict": "1"}, content=line,
                          headers={"Content-Type": "application/x-ndjson"}, auth=(project.token, ""))
    body: dict[str, object] = response.json()
    return body


def test_bad_rows_go_to_rejects_with_the_servers_words_and_the_rest_imports(
    server: Server, project: ProjectCreds, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    t = NOW_S - DAY_S
    bad = {
        2: (b'{"event":"E","properties":{"distinct_id":"u1","$insert_id":"x2"}}', "properties.time"),
        4: (b'{"event":"E","properties":{"time":%d,"distinct_id":"u1","$insert_id":"ajs-next-1:2"}}' % t, "$insert_id"),
        5: (b'{"event":"E","properties":{"time":%d,"distinct_id":"null","$insert_id":"x5"}}' % t, "properties.distinct_id"),
        7: (b'{"event": "E", "properties": {"time": 1, ', "event"),
        8: (b'{"event":"  ","properties":{"time":%d,"distinct_id":"u1","$insert_id":"x8"}}' % t, "event"),
    }
    ignored = b'{"event":"E","properties":{"time":%d,"distinct_id":"u1","$insert_id":"x9","$ignore":true}}' % t
    lines = []
    for i in range(12):
        if i in bad:
            lines.append(bad[i][0])
        elif i == 9:
            lines.append(ignored)
        elif i == 10:
            lines.append(b"   ")  # blank: not a record, not a refusal
        else:
            lines.append(event_line(i, t, "r"))
    path = write_ndjson(tmp_path / "bad.ndjson", lines)
    rejects = tmp_path / "rejects.ndjson"
    result = run_cli("import", str(path), "--host", server.url, "--token", project.token, "--json",
                     "--rejects", str(rejects), env=cache_env)
    assert result.returncode == 1, result.stderr
    summary = summary_of(result)
    assert (summary["read"], summary["imported"], summary["rejected"], summary["ignored"]) == (11, 5, 5, 1)
    entries = {e["index"]: e for e in map(json.loads, rejects.read_text().splitlines())}
    assert set(entries) == set(bad)
    for index, (line, field) in bad.items():
        entry = entries[index]
        assert entry["field"] == field and entry["file"] == str(path), entry
        if index == 7:
            assert entry["message"].startswith("line 8 is not valid JSON") and entry["raw"] == line.decode()
            continue
        # The server, sent the same event on its own, refuses it with the same field and words.
        answer = _post_one(server, project, line)
        record = answer["failed_records"][0]  # type: ignore[index]
        assert (record["field"], record["message"]) == (entry["field"], entry["message"])
        assert entry["event"]["properties"].get("$insert_id")
    assert entries[2]["message"] == validate.TIME_MESSAGE
    assert entries[4]["message"] == validate.INSERT_ID_CHARS
    stored = set(stream_insert_ids(server, project))
    assert stored == {b"r%07d" % i for i in (0, 1, 3, 6, 11)}
    assert "rejected: 5" in result.stderr and "not valid JSON" in result.stderr


def test_dry_run_validates_and_sends_nothing(server: Server, project: ProjectCreds, tmp_path: Path) -> None:
    lines = [*valid_lines(10, prefix="d"), b'{"event":"E","properties":{"distinct_id":"u"}}']
    path = write_ndjson(tmp_path / "dry.ndjson.gz", lines)
    rejects = tmp_path / "dry-rejects.ndjson"
    result = run_cli("import", str(path), "--dry-run", "--json", "--rejects", str(rejects))
    assert result.returncode == 1, result.stderr
    summary = summary_of(result)
    assert (summary["read"], summary["rejected"], summary["requests"], summary["dry_run"]) == (11, 1, 0, True)
    assert "validated (dry run)" in result.stderr and "10 valid" in result.stderr
    assert json.loads(rejects.read_text())["index"] == 10
    assert server.export(project) == []


def test_an_event_over_1mb_within_every_per_value_limit_is_refused_locally(tmp_path: Path) -> None:
    # 20 lists of 254 strings of 255 characters: each value within Mixpanel's limits, the
    # event about 1.3 MB. The tool must measure it, not assume a clean batch is small.
    wide = {f"p{k}": ["x" * 255] * 254 for k in range(20)}
    big = json.dumps({"event": "E", "properties": {"time": NOW_S - 60, "distinct_id": "u", "$insert_id": "big", **wide}})
    assert len(big) > 1024 * 1024
    path = write_ndjson(tmp_path / "big.ndjson", [*valid_lines(3, prefix="b"), big.encode()])
    rejects = tmp_path / "big-rejects.ndjson"
    result = run_cli("import", str(path), "--dry-run", "--json", "--rejects", str(rejects))
    assert result.returncode == 1, result.stderr
    assert (summary_of(result)["read"], summary_of(result)["rejected"]) == (4, 1)
    entry = json.loads(rejects.read_text())
    assert (entry["index"], entry["message"]) == (3, validate.EVENT_TOO_LARGE)


def test_wrong_credentials_stop_at_once_with_the_servers_message(
    server: Server, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    path = write_ndjson(tmp_path / "x.ndjson", valid_lines(5000, prefix="w"))
    result = run_cli("import", str(path), "--host", server.url, "--token", "nope", "--json", "--concurrency", "2",
                     env=cache_env)
    assert result.returncode == 3
    summary = summary_of(result)
    assert summary["retries"] == 0 and summary["requests"] <= 2 and summary["imported"] == 0
    assert "401" in result.stderr and "Invalid credentials" in result.stderr
    assert "run the same command again" in result.stderr


def test_generated_insert_ids_make_reruns_idempotent(
    server: Server, project: ProjectCreds, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    t = NOW_S - DAY_S
    lines = [b'{"event":"E","properties":{"time":%d,"distinct_id":"u%d","n":%d}}' % (t + i, i % 3, i) for i in range(3000)]
    path = write_ndjson(tmp_path / "noids.ndjson", lines)
    for _ in range(2):
        result = run_cli("import", str(path), "--host", server.url, "--token", project.token, "--no-checkpoint",
                         "--json", env=cache_env)
        assert result.returncode == 0, result.stderr
    ids = Counter(stream_insert_ids(server, project))
    assert len(ids) == 3000 and set(ids.values()) == {1}
    assert all(len(i) == 32 for i in ids)


def test_flat_csv_parquet_and_json_array_inputs_from_a_folder_and_stdin(
    server: Server, project: ProjectCreds, tmp_path: Path, cache_env: dict[str, str]
) -> None:
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.csv").write_text(
        "action,user,ts,uuid,plan,amount\n"
        "Signup,alice,2024-03-10T12:00:00Z,csv-1,pro,12.5\n"
        "Login,bob,2024-03-10 08:00:00,csv-2,,3\n"  # naive: read in --time-zone
        "Login,carol,1710072000,csv-3,free,0\n"
    )
    pq.write_table(
        pa.table({"action": ["Buy"], "user": ["dave"], "ts": pa.array([1710072000123], pa.int64()),
                  "uuid": ["pq-1"], "price": [9.99], "tags": [["a", "b"]]}),
        folder / "nested" / "b.parquet",
    )
    (folder / "nested" / "c.json").write_text(json.dumps([
        {"action": "View", "user": "erin", "ts": "2024-03-10T12:00:00+02:00", "uuid": "arr-1", "page": "/"},
    ]))
    (folder / ".hidden.csv").write_text("not,read\n")
    (folder / "notes.txt").write_text("not an input")
    flags = ["--event-column", "action", "--distinct-id-column", "user", "--time-column", "ts",
             "--insert-id-column", "uuid", "--time-zone", "America/New_York", "--infer-types"]
    result = run_cli("import", str(folder), "--host", server.url, "--token", project.token, "--json", *flags,
                     env=cache_env)
    assert result.returncode == 0, result.stderr
    stdin = b'{"action":"Piped","user":"frank","ts":1710072000,"uuid":"stdin-1"}\n'
    piped = run_cli("import", "-", "--host", server.url, "--token", project.token, "--json", *flags, stdin=stdin,
                    env=cache_env)
    assert piped.returncode == 0, piped.stderr
    events = {e["properties"]["$insert_id"]: e for e in server.export(project, time_in_ms="true")}
    assert set(events) == {"csv-1", "csv-2", "csv-3", "pq-1", "arr-1", "stdin-1"}
    signup = events["csv-1"]
    assert signup["event"] == "Signup" and signup["properties"]["distinct_id"] == "alice"
    assert signup["properties"]["time"] == 1710072000000 and signup["properties"]["amount"] == 12.5
    assert events["csv-2"]["properties"]["time"] == 1710072000000  # 08:00 New York (EDT) is 12:00 UTC
    assert "plan" not in events["csv-2"]["properties"]  # an empty cell is an absent property
    assert events["csv-3"]["properties"]["time"] == 1710072000000
    assert events["pq-1"]["properties"]["time"] == 1710072000123
    assert events["pq-1"]["properties"]["tags"] == ["a", "b"] and events["pq-1"]["properties"]["price"] == 9.99
    assert events["arr-1"]["properties"]["time"] == 1710064800000
    assert events["stdin-1"]["event"] == "Piped"


def test_a_changed_input_is_refused_by_its_checkpoint(
    server: Server, project: ProjectCreds, tmp_path: Path
) -> None:
    path = write_ndjson(tmp_path / "c.ndjson", valid_lines(100, prefix="c"))
    checkpoint = tmp_path / "c.ckpt"
    args = ["import", str(path), "--host", server.url, "--token", project.token, "--checkpoint", str(checkpoint)]
    checkpoint.write_text("{}")
    refused = run_cli(*args)
    assert refused.returncode == 2 and "not a checkpoint" in refused.stderr
    checkpoint.unlink()
    assert run_cli(*args).returncode == 0
    write_ndjson(path, valid_lines(150, prefix="c"))  # appended to
    changed = run_cli(*args)
    assert changed.returncode == 2
    assert "different job" in changed.stderr and "changed" in changed.stderr and "--restart" in changed.stderr
    restarted = run_cli(*args, "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert len(server.export(project)) == 150
