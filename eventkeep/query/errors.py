"""The one error the `where` language raises to its callers."""

from __future__ import annotations


class WhereSyntaxError(ValueError):
    """A `where` expression that does not parse; the message says where and what was expected."""
