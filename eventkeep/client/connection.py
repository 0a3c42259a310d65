"""Where to send requests and with which credentials (spec §0, §1).

One place resolves `--host`/`--region`, the credential flags and the `EVENTKEEP_*` variables,
so `import`, `pull` and the Python API agree on precedence: an explicit argument beats the
environment, and the environment beats the default (a local eventkeep on port 8000).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Purpose = Literal["import", "export"]

REGIONS = ("us", "eu", "in")
DEFAULT_HOST = "http://127.0.0.1:8000"


class ConfigError(ValueError):
    """A problem with the arguments or environment: reported plainly, exit status 2."""


def _mixpanel_host(kind: str, region: str) -> str:
    suffix = "" if region == "us" else f"-{region}"
    return f"https://{kind}{suffix}.mixpanel.com"


def normalise_host(value: str, port: str | None = None) -> str:
    """A base URL from `--host`/`EVENTKEEP_HOST`.

    `EVENTKEEP_HOST` is also what `eventkeep serve` reads as its listen address, where it is a
    bare address such as `127.0.0.1`; so a value without a scheme means plain HTTP to that
    address on `EVENTKEEP_PORT` (default 8000), and one server environment serves both.
    """
    value = value.strip().rstrip("/")
    if not value:
        raise ConfigError("--host is empty")
    if "://" in value:
        return value
    if value in ("0.0.0.0", "::", "[::]"):
        value = "127.0.0.1"
    host_part = value.rsplit("]", 1)[-1] if value.startswith("[") else value
    if ":" in host_part:
        return f"http://{value}"
    return f"http://{value}:{port or 8000}"


@dataclass(frozen=True)
class Connection:
    """A resolved destination: base URLs for ingestion and export, and credentials."""

    import_url: str
    export_url: str
    token: str | None = None
    secret: str | None = None
    service_account: tuple[str, str] | None = None
    project_id: int | None = None
    mixpanel: bool = False

    def __repr__(self) -> str:  # never print credentials, not even in a traceback
        return f"Connection(import_url={self.import_url!r}, export_url={self.export_url!r}, project_id={self.project_id})"

    @classmethod
    def resolve(
        cls,
        *,
        host: str | None = None,
        region: str | None = None,
        token: str | None = None,
        secret: str | None = None,
        service_account: str | tuple[str, str] | None = None,
        project_id: int | str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Connection:
        env = os.environ if environ is None else environ
        if host and region:
            raise ConfigError("give either --host or --region, not both")
        if region is not None:
            region = region.lower()
            if region not in REGIONS:
                raise ConfigError(f"--region must be one of {', '.join(REGIONS)}, got {region!r}")
            import_url, export_url, mixpanel = _mixpanel_host("api", region), _mixpanel_host("data", region), True
        else:
            base = normalise_host(host or env.get("EVENTKEEP_HOST") or DEFAULT_HOST, env.get("EVENTKEEP_PORT"))
            import_url = export_url = base
            mixpanel = "mixpanel.com" in base.lower()
            if mixpanel and "://data" in base.lower():
                import_url = base.replace("://data", "://api", 1)
            elif mixpanel and "://api" in base.lower():
                export_url = base.replace("://api", "://data", 1)
        token = token or env.get("EVENTKEEP_TOKEN") or None
        secret = secret or env.get("EVENTKEEP_SECRET") or None
        account = service_account or env.get("EVENTKEEP_SERVICE_ACCOUNT") or None
        parsed_account: tuple[str, str] | None = None
        if isinstance(account, tuple):
            parsed_account = account
        elif account:
            user, sep, password = account.partition(":")
            if not sep or not user or not password:
                raise ConfigError("--service-account must be USERNAME:SECRET")
            parsed_account = (user, password)
        raw_project = project_id if project_id is not None else env.get("EVENTKEEP_PROJECT_ID") or None
        parsed_project: int | None = None
        if raw_project is not None and raw_project != "":
            try:
                parsed_project = int(raw_project)
            except ValueError:
                raise ConfigError(f"--project-id must be an integer, got {raw_project!r}") from None
        return cls(import_url, export_url, token, secret, parsed_account, parsed_project, mixpanel)

    def auth_header(self, purpose: Purpose) -> str:
        """The Basic credentials for a request: service account, else secret, else token.

        A token authorises ingestion only (spec §1), so export refuses to fall back to it.
        """
        if self.service_account is not None:
            if self.project_id is None:
                raise ConfigError("a service account needs --project-id (or EVENTKEEP_PROJECT_ID)")
            user, password = self.service_account
        elif self.secret:
            user, password = self.secret, ""
        elif self.token and purpose == "import":
            user, password = self.token, ""
        elif purpose == "export":
            raise ConfigError(
                "pull needs --secret or --service-account with --project-id "
                "(or EVENTKEEP_SECRET / EVENTKEEP_SERVICE_ACCOUNT); a project token cannot export"
            )
        else:
            raise ConfigError(
                "no credentials: give --token, --secret or --service-account with --project-id "
                "(or EVENTKEEP_TOKEN / EVENTKEEP_SECRET / EVENTKEEP_SERVICE_ACCOUNT)"
            )
        raw = f"{user}:{password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def params(self) -> dict[str, str]:
        return {"project_id": str(self.project_id)} if self.project_id is not None else {}

    def identity(self, purpose: Purpose) -> str:
        """A stable, non-secret digest of where data goes, to tie checkpoints to it."""
        who = self.auth_header(purpose)
        digest = hashlib.sha256(who.encode()).hexdigest()[:16]
        url = self.import_url if purpose == "import" else self.export_url
        return f"{url}|project={self.project_id}|cred={digest}"
