"""The `eventkeep` command line: projects and service accounts, scriptable with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventkeep", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def run_json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = run(*args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_projects_create_json_and_list(tmp_path: Path) -> None:
    data = str(tmp_path / "d")
    created = run_json("projects", "create", "Web", "--time-zone", "Europe/Paris", "--json", "--data-dir", data)
    assert set(created) == {"id", "token", "secret"}
    assert len(created["token"]) == 32 and len(created["secret"]) == 32 and created["token"] != created["secret"]
    listed = run_json("projects", "list", "--json", "--data-dir", data)
    assert [(p["id"], p["name"], p["time_zone"]) for p in listed] == [(created["id"], "Web", "Europe/Paris")]
    shown = run_json("projects", "show", "Web", "--json", "--data-dir", data)
    assert shown["token"] == created["token"] and shown["secret"] == created["secret"]


def test_data_dir_from_the_environment(tmp_path: Path) -> None:
    env = {"EVENTKEEP_DATA_DIR": str(tmp_path / "env-dir")}
    created = run_json("projects", "create", "A", "--json", env=env)
    assert (tmp_path / "env-dir" / "projects.sqlite3").exists()
    assert run_json("projects", "list", "--json", env=env)[0]["id"] == created["id"]


def test_store_url_selects_the_same_store(tmp_path: Path) -> None:
    url = f"duckdb://{tmp_path}/s/events.duckdb"
    created = run_json("projects", "create", "B", "--json", "--store", url)
    assert run_json("projects", "show", str(created["id"]), "--json", "--data-dir", str(tmp_path / "s"))["name"] == "B"


def test_unknown_time_zone_is_refused(tmp_path: Path) -> None:
    result = run("projects", "create", "X", "--time-zone", "Mars/Olympus", "--data-dir", str(tmp_path))
    assert result.returncode != 0 and "unknown time zone" in result.stderr


def test_project_settings_change(tmp_path: Path) -> None:
    data = str(tmp_path)
    created = run_json("projects", "create", "C", "--json", "--data-dir", data)
    changed = run_json("projects", "set", str(created["id"]), "--time-zone", "America/Los_Angeles",
                       "--legacy-local-time", "on", "--json", "--data-dir", data)
    assert changed["time_zone"] == "America/Los_Angeles" and changed["legacy_local_time"] is True


def test_service_account_created_while_the_server_runs_works_at_once(server: Server) -> None:
    data = str(server.data_dir)
    created = run_json("projects", "create", "Live", "--json", "--data-dir", data)
    account = run_json("service-accounts", "create", str(created["id"]), "--json", "--data-dir", data)
    assert set(account) >= {"username", "secret"}
    event = {"event": "e", "properties": {"time": 1_700_000_000, "distinct_id": "u", "$insert_id": "x1"}}
    r = httpx.post(f"{server.url}/import", params={"project_id": created["id"]}, json=[event],
                   auth=(account["username"], account["secret"]))
    assert r.status_code == 200, r.text
    r = httpx.post(f"{server.url}/import", params={"project_id": created["id"]}, json=[event],
                   auth=(account["username"], "wrong"))
    assert r.status_code == 401
    shown = run_json("projects", "show", str(created["id"]), "--json", "--data-dir", data)
    assert shown["service_accounts"] == [account["username"]]
    assert account["secret"] not in json.dumps(shown)  # only the hash is kept


def test_first_start_creates_and_prints_a_project(tmp_path: Path) -> None:
    from tests.conftest import start_server

    server = start_server(tmp_path)
    try:
        projects = server.registry().list_projects()
        assert len(projects) == 1
        log = server.log()
        assert projects[0].token in log and projects[0].secret in log
        assert f"created project {projects[0].id}" in log
    finally:
        server.stop()


def test_secrets_never_appear_in_the_server_log(tmp_path: Path) -> None:
    from tests.conftest import start_server

    server = start_server(tmp_path)
    try:
        project = server.new_project()
        httpx.post(f"{server.url}/import", params={"api_key": project.secret}, json=[{"event": ""}])
        httpx.post(f"{server.url}/import", json=[{"event": "e"}], auth=("not-the-secret-xyz", ""))
        server.stop()
        assert project.secret not in server.log()
        assert "not-the-secret-xyz" not in server.log()
    finally:
        server.stop()


def _import(server: Server, secret: str, events: list[dict[str, Any]]) -> None:
    r = httpx.post(f"{server.url}/import", json=events, auth=(secret, ""))
    assert r.status_code == 200, r.text


def _events(n: int, name: str = "Played") -> list[dict[str, Any]]:
    return [{"event": name, "properties": {"time": 1_700_000_000 + i, "distinct_id": f"u{i}", "$insert_id": f"id{i}"}}
            for i in range(n)]


def test_export_through_the_running_server(server: Server) -> None:
    project = server.new_project()
    _import(server, project.secret, [*_events(3), *_events(2, "Other")])
    result = run("export", str(project.id), "--from-date", "2023-11-14", "--to-date", "2023-11-14", "--event", "Played",
                 "--data-dir", str(server.data_dir), "--url", server.url)
    assert result.returncode == 0, result.stderr
    exported = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["properties"]["distinct_id"] for e in exported] == ["u0", "u1", "u2"]
    assert "through the server" in result.stderr


def test_export_straight_from_the_store_when_no_server_runs(tmp_path: Path) -> None:
    from tests.conftest import start_server

    server = start_server(tmp_path)
    project = server.new_project()
    _import(server, project.secret, _events(5))
    server.stop()
    out = tmp_path / "out.jsonl.gz"
    result = run("export", project.name, "--from-date", "2023-11-14", "--to-date", "2023-11-14", "--time-in-ms",
                 "-o", str(out), "--data-dir", str(server.data_dir))
    assert result.returncode == 0, result.stderr
    import gzip

    exported = [json.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]
    assert [e["properties"]["time"] for e in exported] == [(1_700_000_000 + i) * 1000 for i in range(5)]


def test_export_refuses_bad_dates(tmp_path: Path) -> None:
    created = run_json("projects", "create", "D", "--json", "--data-dir", str(tmp_path))
    result = run("export", str(created["id"]), "--from-date", "2024-02-02", "--to-date", "2024-02-01", "--data-dir", str(tmp_path))
    assert result.returncode != 0 and "is before 'from_date'" in result.stderr


def test_the_command_asks_numpy_for_one_blas_thread_unless_told_otherwise() -> None:
    script = "import eventkeep.__main__, os; print(os.environ['OPENBLAS_NUM_THREADS'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    ours = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    theirs = subprocess.run([sys.executable, "-c", script], env={**env, "OPENBLAS_NUM_THREADS": "3"},
                            capture_output=True, text=True, check=True)
    assert (ours.stdout.strip(), theirs.stdout.strip()) == ("1", "3")
