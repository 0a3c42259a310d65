"""Who is calling: credentials parsed from a request, checked against the project registry.

Mixpanel accepts several credential forms (spec §1): the project token or API secret as the
Basic username with an empty password, a service account with `project_id`, Basic
credentials in plain text as well as base64, and the legacy `api_key` parameter. A token
authorises ingestion only; export needs the API secret or a service account.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

from eventkeep.errors import ApiError, invalid_credentials, missing_credentials
from eventkeep.projects.model import Project
from eventkeep.projects.registry import CredentialCache

Purpose = Literal["ingest", "export"]


@dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print secrets, not even in a traceback
        return "BasicCredentials(username=<hidden>, password=<hidden>)"


def parse_authorization(header: str | None) -> BasicCredentials | None:
    """Read `Authorization: Basic …`, base64 or (as Mixpanel also allows) plain `user:pass`."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    value = value.strip()
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
        if ":" in decoded:
            user, _, password = decoded.partition(":")
            return BasicCredentials(user, password)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    if ":" in value:
        user, _, password = value.partition(":")
        return BasicCredentials(user, password)
    # A bare base64 value with no colon: treat it as a username with no password.
    try:
        return BasicCredentials(base64.b64decode(value, validate=True).decode("utf-8"), "")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return BasicCredentials(value, "")


def _project_id_param(params: dict[str, str]) -> int | None:
    raw = params.get("project_id")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"'project_id' must be an integer, got {raw!r}") from None


def authenticate(
    cache: CredentialCache,
    credentials: BasicCredentials | None,
    params: dict[str, str],
    purpose: Purpose,
) -> Project:
    """Return the project the caller may act on, or raise a 401 ApiError."""
    project_id = _project_id_param(params)
    project: Project | None = None
    if credentials is not None and credentials.password:
        project = cache.by_service_account(credentials.username, credentials.password)
    else:
        key = credentials.username if credentials is not None else params.get("api_key")
        if not key:
            raise missing_credentials()
        project = cache.by_secret(key)
        if project is None and purpose == "ingest":
            project = cache.by_token(key)
    if project is None:
        raise invalid_credentials()
    if project_id is not None and project_id != project.id:
        raise ApiError(401, "Invalid credentials: they do not belong to project_id")
    return project
