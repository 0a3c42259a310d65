"""A Python API for bulk import and export, the same code `eventkeep import` and `pull` run.

    from eventkeep.client import Client

    client = Client("http://127.0.0.1:8000", secret="…")
    summary = client.import_files(["events/"], rejects="rejects.ndjson", concurrency=10)
    assert summary.exit_status == 0, summary.render()
    client.pull("2024-01-01", "2024-01-31", "january.ndjson.gz", strip_ingestion=True)

Credentials and host fall back to the `EVENTKEEP_*` environment variables, as on the
command line; `region="eu"` targets Mixpanel's EU hosts instead of a host.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from eventkeep.client.checkpoint import CheckpointMismatch, Counts
from eventkeep.client.connection import ConfigError, Connection
from eventkeep.client.importer import Importer, ImportOptions, ImportSummary
from eventkeep.client.pull import Puller, PullError, PullOptions, PullSummary
from eventkeep.client.sender import RetryPolicy
from eventkeep.client.shape import ShapeOptions
from eventkeep.client.sources import InputError, expand_inputs

__all__ = [
    "CheckpointMismatch",
    "Client",
    "ConfigError",
    "Connection",
    "Counts",
    "ImportOptions",
    "ImportSummary",
    "InputError",
    "PullError",
    "PullOptions",
    "PullSummary",
    "RetryPolicy",
    "ShapeOptions",
]


def _date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise PullError(f"{value!r} is not a date in yyyy-mm-dd format") from None


class Client:
    """A destination and its credentials; each call runs one import or pull to completion."""

    def __init__(
        self,
        host: str | None = None,
        *,
        region: str | None = None,
        token: str | None = None,
        secret: str | None = None,
        service_account: str | tuple[str, str] | None = None,
        project_id: int | str | None = None,
        transport: Any = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.connection = Connection.resolve(
            host=host,
            region=region,
            token=token,
            secret=secret,
            service_account=service_account,
            project_id=project_id,
            environ=environ,
        )
        self.transport = transport

    def import_files(
        self, inputs: Sequence[str], options: ImportOptions | None = None, **overrides: Any
    ) -> ImportSummary:
        """Import files, folders, globs or `-`; keyword arguments override ImportOptions fields."""
        opts = dataclasses.replace(options or ImportOptions(), **overrides)
        return Importer(self.connection, expand_inputs(inputs), opts, transport=self.transport).run()

    def import_events(
        self, events: Iterable[Any], options: ImportOptions | None = None, **overrides: Any
    ) -> ImportSummary:
        """Import events held in memory (dicts, either shape); no checkpoint."""
        opts = dataclasses.replace(options or ImportOptions(), **overrides)
        return Importer(self.connection, [], opts, events=events, transport=self.transport).run()

    def pull(
        self,
        from_date: str | dt.date,
        to_date: str | dt.date,
        output: str | None = None,
        options: PullOptions | None = None,
        **overrides: Any,
    ) -> PullSummary:
        """Download raw events of an inclusive date range to `output` (NDJSON, CSV, Parquet)."""
        base = options or PullOptions(_date(from_date), _date(to_date))
        opts = dataclasses.replace(base, from_date=_date(from_date), to_date=_date(to_date), output=output, **overrides)
        return Puller(self.connection, opts, transport=self.transport).run()
