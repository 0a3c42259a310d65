"""The project registry interface, and an in-memory cache for the request path."""

from __future__ import annotations

import threading
from typing import Protocol

from eventkeep.projects.model import Project, hash_secret, same_secret


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


class CredentialCache:
    """Answers credential look-ups from memory, reloading from the registry on a miss.

    A miss asks the registry only for its version number, and reloads when that changed: a
    project created a moment ago by `eventkeep projects create` is found on its first
    request, while a flood of bad credentials costs one tiny query each.
    """

    def __init__(self, registry: ProjectRegistry) -> None:
        self._registry = registry
        self._version = -1
        self._lock = threading.Lock()
        self._by_id: dict[int, Project] = {}
        self._by_token: dict[str, Project] = {}
        self._by_secret_hash: dict[str, Project] = {}
        self._accounts: dict[str, tuple[int, str]] = {}
        self.reload()

    def reload(self) -> None:
        version = self._registry.version()
        projects = self._registry.list_projects()
        accounts = self._registry.service_account_hashes()
        with self._lock:
            self._by_id = {p.id: p for p in projects}
            self._by_token = {p.token: p for p in projects}
            self._by_secret_hash = {hash_secret(p.secret): p for p in projects}
            self._accounts = accounts
            self._version = version

    def _maybe_reload(self) -> bool:
        if self._registry.version() == self._version:
            return False
        self.reload()
        return True

    def _lookup(self, table: str, key: str) -> object | None:
        found = getattr(self, table).get(key)
        if found is None and self._maybe_reload():
            found = getattr(self, table).get(key)
        return found

    def by_id(self, project_id: int) -> Project | None:
        found = self._lookup("_by_id", project_id)  # type: ignore[arg-type]
        return found if isinstance(found, Project) else None

    def by_token(self, token: str) -> Project | None:
        found = self._lookup("_by_token", token)
        return found if isinstance(found, Project) else None

    def by_secret(self, secret: str) -> Project | None:
        found = self._lookup("_by_secret_hash", hash_secret(secret))
        if isinstance(found, Project) and same_secret(secret, found.secret):
            return found
        return None

    def by_service_account(self, username: str, secret: str) -> Project | None:
        found = self._lookup("_accounts", username)
        if not isinstance(found, tuple):
            hash_secret(secret)  # same work either way: no timing hint that the name exists
            return None
        project_id, secret_hash = found
        if not same_secret(hash_secret(secret), secret_hash):
            return None
        return self.by_id(project_id)
