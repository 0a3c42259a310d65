"""The `where` expression language: parser, reference evaluator, and SQL compilers.

The semantics are those of the where-language spec (where-language.md); `evaluate` is their
reference implementation, and each store's compiled SQL must select exactly the events it
matches.
"""

from __future__ import annotations

from eventkeep.query.ast import Expr
from eventkeep.query.errors import WhereSyntaxError
from eventkeep.query.parser import parse as parse_where

__all__ = ["Expr", "WhereSyntaxError", "parse_where"]
