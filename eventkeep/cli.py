"""The `eventkeep` command: serve, and manage projects and service accounts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from eventkeep import __version__
from eventkeep.projects.model import Project
from eventkeep.projects.registry import ProjectRegistry
from eventkeep.settings import Settings
from eventkeep.store.open import open_registry


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="directory of the embedded store (default ./eventkeep-data; env EVENTKEEP_DATA_DIR)",
    )
    parser.add_argument(
        "--store",
        help="store URL, e.g. duckdb:///var/lib/eventkeep/events.duckdb (env EVENTKEEP_STORE)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        name: getattr(args, name, None)
        for name in ("data_dir", "store", "host", "port", "workers", "tls_cert", "tls_key", "log_level", "memory_limit")
    }
    return Settings.from_env().with_overrides(**flags)


def _find_project(registry: ProjectRegistry, ref: str) -> Project:
    for project in registry.list_projects():
        if str(project.id) == ref or project.name == ref or project.token == ref:
            return project
    raise SystemExit(f"eventkeep: no project {ref!r} (give its id or name)")


def _print_project(project: Project, as_json: bool) -> None:
    if as_json:
        print(json.dumps(project.public_json()))
        return
    print(f"project {project.id}: {project.name}")
    print(f"  token:      {project.token}")
    print(f"  API secret: {project.secret}")
    print(f"  time zone:  {project.time_zone}{' (legacy local-time export)' if project.legacy_local_time else ''}")
    for username in project.service_accounts:
        print(f"  service account: {username}")


def cmd_serve(args: argparse.Namespace) -> int:
    from eventkeep.server import serve

    return serve(_settings(args))


def cmd_projects(args: argparse.Namespace) -> int:
    registry = open_registry(_settings(args))
    try:
        if args.action == "create":
            project = registry.create_project(args.name, time_zone=args.time_zone or "UTC")
            if args.json:
                print(json.dumps({"id": project.id, "token": project.token, "secret": project.secret}))
            else:
                _print_project(project, False)
        elif args.action == "list":
            projects = registry.list_projects()
            if args.json:
                print(json.dumps([p.public_json() for p in projects]))
            else:
                for p in projects:
                    print(f"{p.id}\t{p.name}\t{p.time_zone}\ttoken={p.token}")
        elif args.action == "show":
            _print_project(_find_project(registry, args.project), args.json)
        elif args.action == "set":
            project = _find_project(registry, args.project)
            legacy = None if args.legacy_local_time is None else args.legacy_local_time == "on"
            project = registry.update_project(project.id, time_zone=args.time_zone, legacy_local_time=legacy)
            _print_project(project, args.json)
    except ValueError as exc:
        raise SystemExit(f"eventkeep: {exc}") from None
    finally:
        registry.close()
    return 0


def cmd_service_accounts(args: argparse.Namespace) -> int:
    registry = open_registry(_settings(args))
    try:
        project = _find_project(registry, args.project)
        username, secret = registry.create_service_account(project.id, args.name or "")
    finally:
        registry.close()
    if args.json:
        print(json.dumps({"username": username, "secret": secret, "project_id": project.id}))
    else:
        print(f"service account for project {project.id}: {username}")
        print(f"  secret: {secret}   (shown once; only its hash is kept)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventkeep", description="A self-hosted, Mixpanel-compatible event store.")
    parser.add_argument("--version", action="version", version=f"eventkeep {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    _add_store_flags(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; env EVENTKEEP_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; env EVENTKEEP_PORT)")
    serve.add_argument("--workers", type=int, help="server processes (DuckDB allows one)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (env EVENTKEEP_TLS_CERT)")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert (env EVENTKEEP_TLS_KEY)")
    serve.add_argument("--log-level", help="debug, info, warning or error (default info)")
    serve.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 2GB")
    serve.set_defaults(func=cmd_serve)

    projects = commands.add_parser("projects", help="create, list and show projects")
    project_actions = projects.add_subparsers(dest="action", required=True)
    create = project_actions.add_parser("create", help="create a project and print its credentials")
    create.add_argument("name")
    create.add_argument("--time-zone", help="IANA time zone for export dates (default UTC)")
    create.add_argument("--json", action="store_true", help='print {"id", "token", "secret"}')
    listing = project_actions.add_parser("list", help="list projects")
    listing.add_argument("--json", action="store_true")
    show = project_actions.add_parser("show", help="show one project's credentials and settings")
    show.add_argument("project", help="project id or name")
    show.add_argument("--json", action="store_true")
    setter = project_actions.add_parser("set", help="change a project's time zone or export mode")
    setter.add_argument("project", help="project id or name")
    setter.add_argument("--time-zone")
    setter.add_argument("--legacy-local-time", choices=["on", "off"], help="export time shifted into the project's zone")
    setter.add_argument("--json", action="store_true")
    for sub in (create, listing, show, setter):
        _add_store_flags(sub)
    projects.set_defaults(func=cmd_projects)

    accounts = commands.add_parser("service-accounts", help="create service accounts")
    account_actions = accounts.add_subparsers(dest="action", required=True)
    account_create = account_actions.add_parser("create", help="create a service account for a project")
    account_create.add_argument("project", help="project id or name")
    account_create.add_argument("--name", help="a label for the account")
    account_create.add_argument("--json", action="store_true", help='print {"username", "secret"}')
    _add_store_flags(account_create)
    accounts.set_defaults(func=cmd_service_accounts)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
