"""Watermark, checkpoint file, connection resolution, rate limiter, time conversion, help."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from eventkeep.client.checkpoint import CheckpointFile, CheckpointMismatch, Counts, Watermark
from eventkeep.client.connection import ConfigError, Connection
from eventkeep.client.pull import RateLimiter, TimeConverter, hour_bounds, slice_where
from eventkeep.client.rejects import RejectsWriter
from tests.conftest import ROOT


def test_watermark_advances_only_over_a_contiguous_acknowledged_prefix() -> None:
    saved: list[tuple[int, int]] = []
    mark = Watermark((0, 0), Counts(), lambda pos, counts: saved.append(pos))
    ends = [(0, 100), (0, 200), (1, 50), (1, 90)]
    for seq, end in enumerate(ends):
        mark.register(seq, end)
    mark.finish(2, True, Counts(read=1))
    mark.finish(1, True, Counts(read=1))
    assert mark.position == (0, 0) and saved == []
    mark.finish(0, True, Counts(read=1))
    assert mark.position == (1, 50) and mark.committed.read == 3
    mark.finish(3, True, Counts(read=1))
    assert mark.position == (1, 90) and saved == [(1, 50), (1, 90)]


def test_a_failed_batch_holds_the_watermark_for_good() -> None:
    mark = Watermark((0, 0), Counts())
    for seq in range(3):
        mark.register(seq, (0, (seq + 1) * 10))
    mark.finish(0, True, Counts())
    mark.finish(1, False, Counts())
    mark.finish(2, True, Counts())
    assert mark.position == (0, 10) and mark.blocked


def test_random_completion_orders_never_let_the_watermark_pass_an_unfinished_batch() -> None:
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randrange(1, 30)
        mark = Watermark((0, 0), Counts())
        for seq in range(n):
            mark.register(seq, (0, seq + 1))
        order = list(range(n))
        rng.shuffle(order)
        done: set[int] = set()
        for seq in order:
            mark.finish(seq, True, Counts(read=1))
            done.add(seq)
            prefix = next((i for i in range(n) if i not in done), n)
            assert mark.position == (0, prefix) and mark.committed.read == prefix


def test_checkpoint_round_trip_refusal_and_atomic_content(tmp_path: Path) -> None:
    job = {"kind": "import", "sources": [{"path": "/a", "size": 1}], "shape": {"x": 1}}
    path = tmp_path / "c.json"
    cp = CheckpointFile(path, job)
    assert cp.load() is None
    cp.save((0, 42), Counts(read=42, imported=40, rejected={"r": 2}), 3, force=True)
    loaded = CheckpointFile(path, job).load()
    assert loaded is not None and loaded.position == (0, 42) and loaded.counts.rejected == {"r": 2}
    assert loaded.retries == 3 and not loaded.complete
    changed = {**job, "sources": [{"path": "/a", "size": 2}]}
    with pytest.raises(CheckpointMismatch, match="input /a changed"):
        CheckpointFile(path, changed).load()
    with pytest.raises(CheckpointMismatch, match="shape changed"):
        CheckpointFile(path, {**job, "shape": {"x": 2}}).load()
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_rejects_file_is_cut_back_to_the_watermark_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    writer = RejectsWriter(str(path), ["a", "b"])
    writer.open(None)
    for position in [(0, 5), (1, 3), (0, 9), (1, 7)]:
        writer.write(position, "f", "m", None, {"event": "E"})
    writer.close()
    with open(path, "ab") as f:
        f.write(b'{"file":"b","input":1,"ind')  # a line cut by a kill
    resumed = RejectsWriter(str(path), ["a", "b"])
    resumed.open((1, 4))
    resumed.write((1, 7), "f", "m", None, {"event": "E"})
    resumed.close()
    assert [(e["input"], e["index"]) for e in map(json.loads, path.read_text().splitlines())] == [
        (0, 5), (1, 3), (0, 9), (1, 7)]


def test_connection_resolution_and_precedence() -> None:
    eu = Connection.resolve(region="eu", secret="s", environ={})
    assert (eu.import_url, eu.export_url, eu.mixpanel) == ("https://api-eu.mixpanel.com",
                                                            "https://data-eu.mixpanel.com", True)
    us = Connection.resolve(region="us", secret="s", environ={})
    assert us.export_url == "https://data.mixpanel.com"
    env = {"EVENTKEEP_HOST": "0.0.0.0", "EVENTKEEP_PORT": "9000", "EVENTKEEP_TOKEN": "t",
           "EVENTKEEP_SERVICE_ACCOUNT": "sa:pw", "EVENTKEEP_PROJECT_ID": "7"}
    local = Connection.resolve(environ=env)
    assert local.import_url == "http://127.0.0.1:9000" and local.params() == {"project_id": "7"}
    assert local.auth_header("import") == local.auth_header("export")  # service account wins
    flags = Connection.resolve(host="https://ek.example.com/", token="flag", environ={"EVENTKEEP_TOKEN": "env"})
    assert flags.import_url == "https://ek.example.com" and flags.token == "flag"
    with pytest.raises(ConfigError, match="cannot export"):
        Connection.resolve(token="t", environ={}).auth_header("export")
    with pytest.raises(ConfigError, match="needs --project-id"):
        Connection.resolve(service_account="a:b", environ={}).auth_header("import")
    with pytest.raises(ConfigError, match="USERNAME:SECRET"):
        Connection.resolve(service_account="nocolon", environ={})
    assert "pw" not in repr(local) and "sa" not in local.identity("import")


def test_rate_limiter_keeps_to_three_a_second_and_sixty_an_hour() -> None:
    clock = [0.0]
    starts: list[float] = []

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    limiter = RateLimiter(3, 60, clock=lambda: clock[0], sleep=sleep)
    for _ in range(130):
        limiter.acquire()
        starts.append(clock[0])
    assert all(b - a >= 1 / 3 - 1e-9 for a, b in itertools.pairwise(starts))
    for i, start in enumerate(starts):
        in_hour = [s for s in starts[: i + 1] if start - s < 3600 - 1e-6]  # float drift
        assert len(in_hour) <= 60
    assert starts[60] >= 3600 and starts[120] >= 7200


def test_time_converter_undoes_a_local_time_export_across_dst() -> None:
    zone = __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    for utc in [dt.datetime(2024, 3, 31, 0, 30, tzinfo=dt.UTC), dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.UTC),
                dt.datetime(2024, 7, 1, 12, tzinfo=dt.UTC), dt.datetime(2024, 12, 24, 23, 59, 59, tzinfo=dt.UTC)]:
        utc_s = int(utc.timestamp())
        local_s = utc_s + int(utc.astimezone(zone).utcoffset().total_seconds())  # type: ignore[union-attr]
        assert TimeConverter(zone, in_ms=False).to_utc(local_s) == utc_s
        assert TimeConverter(zone, in_ms=True).to_utc(local_s * 1000 + 123) == utc_s * 1000 + 123


def test_hour_slices_partition_a_day_including_dst_days() -> None:
    zone = __import__("zoneinfo").ZoneInfo("America/New_York")
    assert len(hour_bounds(dt.date(2024, 3, 10), zone)) == 23
    assert len(hour_bounds(dt.date(2024, 11, 3), zone)) == 25
    slices = hour_bounds(dt.date(2024, 5, 1), dt.UTC)
    assert len(slices) == 24 and slices[0][0] is None and slices[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    assert slice_where('properties["a"] == 1', 1714521600, None) == (
        '(properties["a"] == 1) and (event["$time"] >= datetime("2024-05-01T00:00:00"))')


def test_help_documents_every_option_with_an_example() -> None:
    for command in ("import", "pull"):
        text = subprocess.run([sys.executable, "-m", "eventkeep", command, "--help"], cwd=ROOT,
                              capture_output=True, text=True, check=True, env={"COLUMNS": "200"}).stdout
        assert "examples:" in text and "exit status" in text
        entries: list[str] = []
        for line in text.split("options:", 1)[1].split("examples:", 1)[0].splitlines():
            stripped = line.strip()
            if stripped.startswith("-"):
                entries.append(stripped)
            elif stripped and entries and entries[-1] and line.startswith(" "):
                entries[-1] += " " + stripped
            elif (not stripped or not line.startswith(" ")) and entries and entries[-1] != "":
                entries.append("")  # a blank line or a group heading ends the entry
        options = [e for e in entries if e and "--help" not in e]
        assert len(options) > 15
        for entry in options:
            assert "e.g." in entry, entry
    imp = subprocess.run([sys.executable, "-m", "eventkeep", "import", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--host", "--region", "--token", "--secret", "--service-account", "--project-id", "--rejects",
                 "--checkpoint", "--concurrency", "--dry-run", "--backoff-base", "--backoff-max", "--time-zone"):
        assert flag in imp
    pull = subprocess.run([sys.executable, "-m", "eventkeep", "pull", "--help"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    for flag in ("--from-date", "--to-date", "--event", "--where", "-o", "--project-time-zone",
                 "--strip-ingestion-props"):
        assert flag in pull


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    import io

    from eventkeep.client.progress import Progress, Snapshot

    snap = Snapshot(done_bytes=250, total_bytes=1000, events=50_000, imported=49_000, rejected=3, retries=2)
    bar = Progress(lambda: snap, mode="bar").render(snap, 10.0)
    assert bar.startswith("\r[######") and "25.0%" in bar and "5,000 events/s" in bar and "ETA 0:30" in bar
    line = Progress(lambda: snap, mode="lines").render(snap, 10.0)
    assert line.endswith("\n") and "\r" not in line and "25.0% done" in line and "3 rejected" in line
    stream = io.StringIO()
    assert Progress(lambda: snap, stream=stream).mode == "lines"  # not a terminal
    unknown = Snapshot(0, None, 10, 10, 0, 0)
    assert "ETA" not in Progress(lambda: unknown, mode="lines").render(unknown, 1.0)
