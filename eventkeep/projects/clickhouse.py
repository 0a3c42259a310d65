"""Projects, service accounts and settings in ClickHouse, shared by every eventkeep server.

One small ReplacingMergeTree (`registry`), read whole with FINAL: the registry holds a handful
of rows and the credential cache reads it only when its version changes. With a cluster it is
a Distributed table with a constant sharding key, so all of it lives on the first shard and
every server, whichever node it talks to, sees the same rows.

Rows are (kind, key, claim) -> value, versioned by `updated` (microseconds):
- ("project", "<id>", "<nonce>"): name, token, secret, created_at and `state`.
- ("setting", "<id>/<name>", ""): one project setting (time zone, legacy export), so two
  people changing different settings at once do not undo each other.
- ("account", "<username>", ""): project id and the secret's hash.

Project ids are small sequential numbers, allocated without locks or transactions: a creator
takes max(id) + 1, inserts a *pending* claim with a random nonce, then reads every claim of
that id. It confirms (a second insert) only if its claim is the only one; otherwise it leaves
its claim pending and tries the next id. Readers see confirmed projects only. Two creators of
one id can't both confirm: whichever read ran second saw the other's claim, because both
inserted before reading and ClickHouse shows a read every insert acknowledged before it. Both
may step aside, which only skips an id. (With a replicated first shard this relies on reads
and writes both going to its first replica, which `load_balancing = in_order` gives.)
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from eventkeep.projects.model import (
    Project,
    check_time_zone,
    hash_secret,
    new_secret,
    new_service_account_username,
    new_token,
)
from eventkeep.store.base import StoreUnavailable
from eventkeep.store.clickhouse_schema import (
    ClickHouseHTTP,
    ClickHouseTarget,
    Tables,
    ensure_schema,
    literal,
)

log = logging.getLogger("eventkeep.projects.clickhouse")

MAX_CLAIM_ATTEMPTS = 20
VERSION_TIMEOUT = 2.0  # the credential cache asks on the request path: never wait long
RETRY_AFTER_FAILURE = 5.0  # after a failed version check, answer from cache this long
_SETTINGS = ("time_zone", "legacy_local_time")


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ClickHouseRegistry:
    def __init__(self, target: ClickHouseTarget, *, create_schema: bool = True) -> None:
        self.target = target
        self.tables = Tables(target.database, sharded=target.cluster is not None)
        self._http = ClickHouseHTTP.for_target(target, timeout=min(target.query_timeout, 30.0))
        if create_schema:
            ensure_schema(target, self._http)
        self._lock = threading.Lock()
        self._last_updated = 0
        self._last_version: int | None = None
        self._unreachable_until = 0.0

    # -- low level -----------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"load_balancing": "in_order"}
        if self.tables.sharded:
            settings["insert_distributed_sync"] = 1
        return settings

    def _stamp(self) -> int:
        """A version for a new row: later than any this process wrote, in microseconds."""
        with self._lock:
            self._last_updated = max(time.time_ns() // 1000, self._last_updated + 1)
            return self._last_updated

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        body = b"".join(orjson.dumps(row) + b"\n" for row in rows)
        self._http.execute(
            f"INSERT INTO {self.tables.registry} (kind, key, claim, value, updated) FORMAT JSONEachRow",
            data=body,
            settings=self._settings(),
        )

    def _rows(self, where: str = "1") -> list[dict[str, Any]]:
        # FINAL through Distributed needs the sorting key and version selected (see store).
        return self._http.json_rows(
            f"SELECT kind, key, claim, value, updated FROM {self.tables.registry} FINAL WHERE {where}",
            settings={"load_balancing": "in_order"},
        )

    def _row(self, kind: str, key: str, claim: str, value: dict[str, Any], updated: int | None = None) -> dict[str, Any]:
        return {
            "kind": kind,
            "key": key,
            "claim": claim,
            "value": orjson.dumps(value).decode(),
            "updated": updated if updated is not None else self._stamp(),
        }

    # -- the ProjectRegistry protocol ----------------------------------------------------

    def version(self) -> int:
        """Changes whenever a row is added (or merged away): a sum of the rows' hashes.

        When ClickHouse cannot be reached this answers the last version it saw, so servers
        keep authenticating from their cached credentials while the registry's shard is down;
        after a failure it does not ask again for a few seconds, since the credential cache
        calls this on the request path.
        """
        if self._last_version is not None and time.monotonic() < self._unreachable_until:
            return self._last_version
        try:
            text = self._http.scalar(
                f"SELECT toString(sum(sipHash64(kind, key, claim, value, updated))) FROM {self.tables.registry}",
                timeout=VERSION_TIMEOUT,
            )
        except StoreUnavailable:
            if self._last_version is None:
                raise
            self._unreachable_until = time.monotonic() + RETRY_AFTER_FAILURE
            log.warning("the project registry is unreachable; using cached credentials")
            return self._last_version
        self._last_version = int(text or 0)
        return self._last_version

    def list_projects(self) -> list[Project]:
        rows = self._rows()
        claims: dict[int, list[dict[str, Any]]] = {}
        settings: dict[tuple[int, str], Any] = {}
        accounts: dict[int, list[tuple[str, str]]] = {}
        for row in rows:
            value = orjson.loads(row["value"])
            if row["kind"] == "project":
                claims.setdefault(int(row["key"]), []).append({**value, "_claim": row["claim"]})
            elif row["kind"] == "setting":
                project_id, name = row["key"].split("/", 1)
                settings[(int(project_id), name)] = value["value"]
            elif row["kind"] == "account":
                accounts.setdefault(int(value["project_id"]), []).append((value["created_at"], row["key"]))
        projects = []
        for project_id in sorted(claims):
            confirmed = [c for c in claims[project_id] if c.get("state") == "confirmed"]
            if not confirmed:
                continue
            found = min(confirmed, key=lambda c: c["_claim"])  # only one can be; be deterministic
            projects.append(
                Project(
                    id=project_id,
                    name=found["name"],
                    token=found["token"],
                    secret=found["secret"],
                    time_zone=settings.get((project_id, "time_zone"), found.get("time_zone", "UTC")),
                    legacy_local_time=bool(settings.get((project_id, "legacy_local_time"), False)),
                    created_at=found["created_at"],
                    service_accounts=tuple(name for _, name in sorted(accounts.get(project_id, []))),
                )
            )
        return projects

    def _get(self, project_id: int) -> Project:
        for project in self.list_projects():
            if project.id == project_id:
                return project
        raise KeyError(f"no project with id {project_id}")

    def create_project(self, name: str, time_zone: str = "UTC") -> Project:
        check_time_zone(time_zone)
        value = {
            "name": name, "token": new_token(), "secret": new_secret(), "time_zone": time_zone,
            "created_at": _now_text(), "state": "pending",
        }
        for _attempt in range(MAX_CLAIM_ATTEMPTS):
            taken = self._http.scalar(
                f"SELECT max(toUInt64OrZero(key)) FROM {self.tables.registry} WHERE kind = 'project'",
            )
            project_id = int(taken or 0) + 1
            nonce = secrets.token_hex(8)
            pending = self._row("project", str(project_id), nonce, value)
            self._insert([pending])
            claims = self._rows(f"kind = 'project' AND key = {literal(str(project_id))}")
            if [c["claim"] for c in claims] == [nonce]:
                self._insert([self._row("project", str(project_id), nonce, {**value, "state": "confirmed"},
                                        updated=pending["updated"] + 1)])
                return self._get(project_id)
            time.sleep(secrets.randbelow(50) / 1000)  # step aside; someone else claimed it too
        raise StoreUnavailable(f"could not allocate a project id after {MAX_CLAIM_ATTEMPTS} attempts")

    def update_project(
        self, project_id: int, *, time_zone: str | None = None, legacy_local_time: bool | None = None
    ) -> Project:
        self._get(project_id)
        rows = []
        if time_zone is not None:
            rows.append(self._row("setting", f"{project_id}/time_zone", "", {"value": check_time_zone(time_zone)}))
        if legacy_local_time is not None:
            rows.append(self._row("setting", f"{project_id}/legacy_local_time", "", {"value": bool(legacy_local_time)}))
        if rows:
            self._insert(rows)
        return self._get(project_id)

    def create_service_account(self, project_id: int, label: str = "") -> tuple[str, str]:
        self._get(project_id)
        existing = self.service_account_hashes()
        for _attempt in range(MAX_CLAIM_ATTEMPTS):
            username = new_service_account_username(label)
            if username not in existing:
                break
        else:  # pragma: no cover - 24 random bits, twenty times
            raise StoreUnavailable("could not pick an unused service account name")
        secret = new_secret()
        self._insert([
            self._row("account", username, "", {
                "project_id": project_id, "secret_hash": hash_secret(secret), "created_at": _now_text(),
            })
        ])
        return username, secret

    def service_account_hashes(self) -> dict[str, tuple[int, str]]:
        result = {}
        for row in self._rows("kind = 'account'"):
            value = orjson.loads(row["value"])
            result[row["key"]] = (int(value["project_id"]), str(value["secret_hash"]))
        return result

    def close(self) -> None:
        self._http.close()
