"""Plain data for projects and service accounts, and how their credentials are made."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    token: str
    secret: str
    time_zone: str = "UTC"
    # Mixpanel's pre-2023 projects export `time` shifted into the project's time zone.
    legacy_local_time: bool = False
    created_at: str = ""
    service_accounts: tuple[str, ...] = field(default=())

    def public_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "token": self.token,
            "secret": self.secret,
            "time_zone": self.time_zone,
            "legacy_local_time": self.legacy_local_time,
            "created_at": self.created_at,
            "service_accounts": list(self.service_accounts),
        }


@dataclass(frozen=True)
class ServiceAccount:
    username: str
    project_id: int
    secret_hash: str
    created_at: str = ""


def new_token() -> str:
    return secrets.token_hex(16)


def new_secret() -> str:
    return secrets.token_hex(16)


def new_service_account_username(label: str = "") -> str:
    label = "".join(c for c in label.lower() if c.isalnum() or c == "-")[:24] or "sa"
    return f"{label}.{secrets.token_hex(3)}.eventkeep-service-account"


def hash_secret(secret: str) -> str:
    """Secrets are long random strings, so a plain SHA-256 is enough to keep them unreadable."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Paris')") from None
    return name
