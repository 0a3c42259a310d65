"""The project registry interface, and an in-memory cache for the request path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from eventkeep.projects.model import Project, hash_secret, same_secret

T = TypeVar("T")


class ProjectRegistry(Protocol):
    """Where projects and service accounts live. Each store kind brings its own."""

    def create_project(self, name: str, time_zone: str = "UTC") -> Project: ...

    def update_project(
        self, project_id: int, *, time_zone: str | None = None, legacy_local_time: bool | None = None
    ) -> Project: ...

    def list_projects(self) -> list[Project]: ...

    def create_service_account(self, project_id: int, label: str = "") -> tuple[str, str]:
        """Return (username, secret); only the secret's hash is kept."""
        ...

    def service_account_hashes(self) -> dict[str, tuple[int, str]]:
        """username -> (project id, secret hash)."""
        ...

    def version(self) -> int:
        """A number that changes whenever projects or service accounts change."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Snapshot:
    version: int
    by_id: dict[int, Project]
    by_token: dict[str, Project]
    by_secret_hash: dict[str, Project]
    accounts: dict[str, tuple[int, str]]


class CredentialCache:
    """Answers credential look-ups from memory, reloading from the registry when it changed.

    A miss asks the registry for its version number (one tiny query) and reloads when it
    changed, so a project created a moment ago by `eventkeep projects create` is found on its
    first request. Hits re-check the version at most once per `max_age` seconds, so a changed
    setting (a project's time zone) reaches a running server within that time.
    """

    def __init__(self, registry: ProjectRegistry, max_age: float = 1.0) -> None:
        self._registry = registry
        self._max_age = max_age
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._snapshot = self._load()

    def _load(self) -> _Snapshot:
        version = self._registry.version()
        projects = self._registry.list_projects()
        return _Snapshot(
            version=version,
            by_id={p.id: p for p in projects},
            by_token={p.token: p for p in projects},
            by_secret_hash={hash_secret(p.secret): p for p in projects},
            accounts=self._registry.service_account_hashes(),
        )

    def _refresh(self) -> bool:
        """Reload if the registry changed; True when it did."""
        with self._lock:
            self._checked_at = time.monotonic()
            if self._registry.version() == self._snapshot.version:
                return False
            self._snapshot = self._load()
            return True

    def _lookup(self, select: Callable[[_Snapshot], T | None]) -> T | None:
        if time.monotonic() - self._checked_at > self._max_age:
            self._refresh()
        found = select(self._snapshot)
        if found is None and self._refresh():
            found = select(self._snapshot)
        return found

    def by_id(self, project_id: int) -> Project | None:
        return self._lookup(lambda snap: snap.by_id.get(project_id))

    def by_token(self, token: str) -> Project | None:
        return self._lookup(lambda snap: snap.by_token.get(token))

    def by_secret(self, secret: str) -> Project | None:
        digest = hash_secret(secret)
        found = self._lookup(lambda snap: snap.by_secret_hash.get(digest))
        if found is not None and same_secret(secret, found.secret):
            return found
        return None

    def by_service_account(self, username: str, secret: str) -> Project | None:
        digest = hash_secret(secret)  # computed either way: no timing hint that the name exists
        found = self._lookup(lambda snap: snap.accounts.get(username))
        if found is None:
            return None
        project_id, secret_hash = found
        if not same_secret(digest, secret_hash):
            return None
        return self.by_id(project_id)
