"""Projects in a small SQLite file beside the DuckDB events file.

DuckDB allows one process per database file, so the registry lives apart: `eventkeep
projects create` can then run while the server holds the events file open.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from eventkeep.projects.model import (
    Project,
    check_time_zone,
    hash_secret,
    new_secret,
    new_service_account_username,
    new_token,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    time_zone TEXT NOT NULL DEFAULT 'UTC',
    legacy_local_time INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO registry_version VALUES (1, 0);
CREATE TABLE IF NOT EXISTS service_accounts (
    username TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    secret_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SQLiteRegistry:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        self._version_db: sqlite3.Connection | None = None
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("UPDATE registry_version SET version = version + 1 WHERE id = 1")

    def version(self) -> int:
        """Changes whenever any process changes the registry: a cheap 'anything new?' check."""
        with self._lock:
            if self._version_db is None:
                self._version_db = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
            row = self._version_db.execute("SELECT version FROM registry_version").fetchone()
        return int(row[0])

    def create_project(self, name: str, time_zone: str = "UTC") -> Project:
        check_time_zone(time_zone)
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO projects (name, token, secret, time_zone, created_at) VALUES (?, ?, ?, ?, ?)",
                (name, new_token(), new_secret(), time_zone, _now()),
            )
            project_id = cursor.lastrowid
            self._bump(db)
        assert project_id is not None
        return self._get(project_id)

    def update_project(
        self, project_id: int, *, time_zone: str | None = None, legacy_local_time: bool | None = None
    ) -> Project:
        self._get(project_id)
        with self._connect() as db:
            if time_zone is not None:
                db.execute(
                    "UPDATE projects SET time_zone = ? WHERE id = ?",
                    (check_time_zone(time_zone), project_id),
                )
            if legacy_local_time is not None:
                db.execute(
                    "UPDATE projects SET legacy_local_time = ? WHERE id = ?",
                    (int(legacy_local_time), project_id),
                )
            self._bump(db)
        return self._get(project_id)

    def _get(self, project_id: int) -> Project:
        for project in self.list_projects():
            if project.id == project_id:
                return project
        raise KeyError(f"no project with id {project_id}")

    def list_projects(self) -> list[Project]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, name, token, secret, time_zone, legacy_local_time, created_at "
                "FROM projects ORDER BY id"
            ).fetchall()
            accounts = db.execute(
                "SELECT project_id, username FROM service_accounts ORDER BY created_at"
            ).fetchall()
        by_project: dict[int, list[str]] = {}
        for project_id, username in accounts:
            by_project.setdefault(project_id, []).append(username)
        return [
            Project(
                id=row[0],
                name=row[1],
                token=row[2],
                secret=row[3],
                time_zone=row[4],
                legacy_local_time=bool(row[5]),
                created_at=row[6],
                service_accounts=tuple(by_project.get(row[0], ())),
            )
            for row in rows
        ]

    def create_service_account(self, project_id: int, label: str = "") -> tuple[str, str]:
        self._get(project_id)
        username = new_service_account_username(label)
        secret = new_secret()
        with self._connect() as db:
            db.execute(
                "INSERT INTO service_accounts (username, project_id, secret_hash, created_at) "
                "VALUES (?, ?, ?, ?)",
                (username, project_id, hash_secret(secret), _now()),
            )
            self._bump(db)
        return username, secret

    def service_account_hashes(self) -> dict[str, tuple[int, str]]:
        with self._connect() as db:
            rows = db.execute("SELECT username, project_id, secret_hash FROM service_accounts").fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def close(self) -> None:
        with self._lock:
            if self._version_db is not None:
                self._version_db.close()
                self._version_db = None
