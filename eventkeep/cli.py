"""The `eventkeep` command: serve, and manage projects and service accounts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from eventkeep import __version__
from eventkeep.settings import Settings

if TYPE_CHECKING:  # the store and the registry are imported by the commands that use them,
    # so that `eventkeep import` and `pull` start without them (a tenth of a second)
    from eventkeep.projects.model import Project
    from eventkeep.projects.registry import ProjectRegistry


def open_registry(settings: Settings) -> ProjectRegistry:
    from eventkeep.store.open import open_registry as opened

    return opened(settings)


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="directory of the embedded store (default ./eventkeep-data; env EVENTKEEP_DATA_DIR)",
    )
    parser.add_argument(
        "--store",
        help="store URL, e.g. duckdb:///var/lib/eventkeep/events.duckdb or "
        "clickhouse://HOST:8123/DATABASE[?cluster=NAME] (env EVENTKEEP_STORE)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        name: getattr(args, name, None)
        for name in ("data_dir", "store", "host", "port", "workers", "tls_cert", "tls_key", "log_level", "memory_limit",
                     "ingest_processes")
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


def cmd_export(args: argparse.Namespace) -> int:
    """Export from the store itself, or through the running server that holds it."""
    from eventkeep.errors import ApiError
    from eventkeep.exporting import build_query
    from eventkeep.store.base import StoreUnavailable
    from eventkeep.store.open import open_store

    settings = _settings(args)
    registry = open_registry(settings)
    try:
        project = _find_project(registry, args.project)
    finally:
        registry.close()
    params = {"from_date": args.from_date, "to_date": args.to_date}
    if args.event:
        params["event"] = json.dumps(args.event)
    if args.where:
        params["where"] = args.where
    if args.limit is not None:
        params["limit"] = str(args.limit)
    if args.time_in_ms:
        params["time_in_ms"] = "true"
    try:
        query, time_in_ms = build_query(project, params)
    except ApiError as exc:
        raise SystemExit(f"eventkeep: {exc.message}") from None
    with _output(args.output) as out:
        try:
            store, store_registry = open_store(settings)
        except StoreUnavailable:
            return _export_through_server(args.url or f"http://127.0.0.1:{settings.port}", project, params, out)
        try:
            zone = project.time_zone if project.legacy_local_time else None
            for chunk in store.export_lines(query, time_in_ms=time_in_ms, local_time_zone=zone):
                out.write(chunk)
        finally:
            store.close()
            store_registry.close()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the store's schema (ClickHouse: on every node of the cluster)."""
    settings = _settings(args)
    url = settings.store_url
    if url.startswith(("clickhouse:", "clickhouses:")):
        from eventkeep.store.base import StoreUnavailable
        from eventkeep.store.clickhouse_schema import ClickHouseTarget, migrate

        try:
            results = migrate(ClickHouseTarget.parse(url), strict=True)
        except (StoreUnavailable, ValueError) as exc:
            raise SystemExit(f"eventkeep: migration failed: {exc}") from None
        for address, before, after in results:
            print(f"{address}: schema version {before} -> {after}")
        return 0
    from eventkeep.store.open import open_store

    store, registry = open_store(settings)  # the embedded store creates its schema on open
    store.close()
    registry.close()
    print(f"{url}: schema up to date")
    return 0


def _output(path: str | None) -> Any:
    import contextlib
    import gzip

    if path is None or path == "-":
        return contextlib.nullcontext(sys.stdout.buffer)
    if path.endswith(".gz"):
        return gzip.open(path, "wb", compresslevel=6)
    return open(path, "wb")


def _export_through_server(url: str, project: Project, params: dict[str, str], out: Any) -> int:
    import httpx

    print(f"eventkeep: the store is in use; exporting through the server at {url}", file=sys.stderr)
    try:
        with httpx.stream("GET", f"{url}/api/2.0/export", params=params, auth=(project.secret, ""), timeout=None) as response:
            if response.status_code != 200:
                response.read()
                raise SystemExit(f"eventkeep: the server answered {response.status_code}: {response.text}")
            tail = b""
            for chunk in response.iter_bytes():
                out.write(chunk)
                tail = (tail + chunk)[-64:]
    except httpx.HTTPError as exc:
        raise SystemExit(f"eventkeep: cannot reach the server at {url}: {exc}") from None
    if tail.endswith(b"export terminated early\n"):
        raise SystemExit("eventkeep: the export was cut short by the server; run it again")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eventkeep", description="A self-hosted, Mixpanel-compatible event store.")
    parser.add_argument("--version", action="version", version=f"eventkeep {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    _add_store_flags(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; env EVENTKEEP_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; env EVENTKEEP_PORT)")
    serve.add_argument("--workers", type=int, help="server processes (DuckDB allows one; env EVENTKEEP_WORKERS)")
    serve.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (env EVENTKEEP_TLS_CERT)")
    serve.add_argument("--tls-key", help="PEM private key for --tls-cert (env EVENTKEEP_TLS_KEY)")
    serve.add_argument("--log-level", help="debug, info, warning or error (default info)")
    serve.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 2GB")
    serve.add_argument("--ingest-processes", type=int,
                       help="worker processes that decode and check large /import and /track bodies "
                            "(default one per core; 0 checks everything in the server process; "
                            "env EVENTKEEP_INGEST_PROCESSES)")
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

    export = commands.add_parser(
        "export",
        help="write a project's raw events as JSONL (Mixpanel export format)",
        description="Export raw events on the server's own machine, straight from the store, or "
        "through the running server when it holds the store. Example: eventkeep export 1 "
        "--from-date 2024-01-01 --to-date 2024-01-31 --event Purchased -o jan.jsonl.gz",
    )
    export.add_argument("project", help="project id or name")
    export.add_argument("--from-date", required=True, help="first day, yyyy-mm-dd, in the project's time zone")
    export.add_argument("--to-date", required=True, help="last day (inclusive), yyyy-mm-dd")
    export.add_argument("--event", action="append", help="only this event name (repeat for more)")
    export.add_argument("--where", help='a filter expression, e.g. \'properties["plan"] == "pro"\'')
    export.add_argument("--limit", type=int, help="at most this many events")
    export.add_argument("--time-in-ms", action="store_true", help="time in milliseconds")
    export.add_argument("-o", "--output", help="file to write (.gz compresses); default stdout")
    export.add_argument("--url", help="the running server, when it holds the store (default http://127.0.0.1:PORT)")
    export.add_argument("--port", type=int, help=argparse.SUPPRESS)
    _add_store_flags(export)
    export.set_defaults(func=cmd_export)

    migrate = commands.add_parser("migrate", help="create or upgrade the store's schema (also done on start)")
    _add_store_flags(migrate)
    migrate.set_defaults(func=cmd_migrate)

    accounts = commands.add_parser("service-accounts", help="create service accounts")
    account_actions = accounts.add_subparsers(dest="action", required=True)
    account_create = account_actions.add_parser("create", help="create a service account for a project")
    account_create.add_argument("project", help="project id or name")
    account_create.add_argument("--name", help="a label for the account")
    account_create.add_argument("--json", action="store_true", help='print {"username", "secret"}')
    _add_store_flags(account_create)
    accounts.set_defaults(func=cmd_service_accounts)
    from eventkeep.client.cli import register as register_bulk_commands  # import, pull

    register_bulk_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
