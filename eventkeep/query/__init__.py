"""The `where` expression language (placeholder until the parser lands)."""

from __future__ import annotations

from typing import Any


class WhereSyntaxError(ValueError):
    """A `where` expression that does not parse; the message says where."""


def parse_where(text: str) -> Any:
    raise WhereSyntaxError("'where' filters are not supported yet")
